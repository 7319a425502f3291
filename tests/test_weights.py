"""weights.toml resolution against a loopback Hub: pull, cache, path, verify, tampering, offline."""

import hashlib
import json
import threading
from dataclasses import asdict, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest
import torch

from vidseg_cli.models.registry import backbone
from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.train import save_model
from vidseg_cli.weights import registry as weights_registry

REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY = MemNetConfig(key_dim=8, value_dim=8, mask_dim=4, decoder_dims=(8, 8, 8), fusion_hidden=4, topk=4)


def _toml_config(config: MemNetConfig) -> str:
    """The architecture as weights.toml lists it: an inline table."""
    items = ", ".join(f"{k} = {_toml_value(v)}" for k, v in asdict(config).items())
    return "config = { " + items + " }\n"


def _toml_value(value) -> str:
    if isinstance(value, tuple):
        return str(list(value))
    return json.dumps(value) if isinstance(value, str) else str(value)  # a JSON string is a TOML basic string


class _Hub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self._answer(body=False)

    def do_GET(self):  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        data = self.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", REVISION)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback Hub serving a tiny model twice: once as pinned, once tampered."""
    model_file = tmp_path / "tiny.safetensors"
    torch.manual_seed(0)
    save_model(MemoryNetwork(backbone(), TINY), model_file)
    good = model_file.read_bytes()
    _Hub.files = {
        f"/vidseg/tiny/resolve/{REVISION}/tiny.safetensors": good,
        f"/vidseg/tiny/resolve/{REVISION}/tampered.safetensors": good[:-1] + bytes([good[-1] ^ 1]),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sha = hashlib.sha256(good).hexdigest()
    toml = tmp_path / "weights.toml"
    toml.write_text(
        "".join(
            f'[{name}]\ntask = "vos"\narch = "memnet"\nsource = "hub"\nrepo_id = "vidseg/tiny"\n'
            f'filename = "{filename}"\nrevision = "{REVISION}"\nsha256 = "{sha}"\n' + _toml_config(config) + "\n"
            for name, filename, config in (("tiny", "tiny.safetensors", TINY), ("tampered", "tampered.safetensors", TINY),
                                           ("gone", "gone.safetensors", TINY),
                                           ("misdescribed", "tiny.safetensors", replace(TINY, topk=5)))
        )
        + (weights_registry.REGISTRY_FILE.read_text())
    )
    monkeypatch.setattr(weights_registry, "REGISTRY_FILE", toml)
    weights_registry.registry.cache_clear()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield good
    server.shutdown()
    weights_registry.registry.cache_clear()


def test_pull_downloads_at_the_pinned_commit_then_path_finds_it(vidseg, hub):
    before = vidseg("weights", "path", "tiny")
    assert before.code == 2 and "weights pull tiny" in before.stderr, (before.stderr, before.exception)
    pulled = vidseg("weights", "pull", "tiny")
    assert pulled.code == 0, pulled.stderr
    path = pulled.stdout.strip()
    assert REVISION in path and open(path, "rb").read() == hub
    assert vidseg("weights", "path", "tiny").stdout.strip() == path
    assert isinstance(create_vos_model("tiny"), MemoryNetwork)
    listed = vidseg("weights", "list")
    assert "tiny" in listed.stdout and "cached" in listed.stdout and "not downloaded" in listed.stdout


def test_a_tampered_download_is_refused_and_verify_fails(vidseg, hub):
    pulled = vidseg("weights", "pull", "tampered")
    assert pulled.code == 2 and "sha256 mismatch" in pulled.stderr
    with pytest.raises(Exception, match="sha256 mismatch"):
        create_vos_model("tampered")
    vidseg("weights", "pull", "tiny")
    checked = vidseg("weights", "verify")
    assert checked.code == 1
    lines = {line.split()[1]: line.split()[0] for line in checked.stdout.splitlines()}
    assert lines["tampered"] == "MISMATCH" and lines["tiny"] == "ok" and lines["gone"] == "absent"


def test_missing_on_the_hub_and_offline_give_clear_errors(vidseg, hub, monkeypatch):
    missing = vidseg("weights", "pull", "gone")
    assert missing.code == 2 and "cannot download 'gone'" in missing.stderr
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it
    offline = vidseg("weights", "pull", "tiny")
    assert offline.code == 2 and "cannot download 'tiny'" in offline.stderr
    assert "tiny" in str(pytest.raises(Exception, create_vos_model, "tiny").value)


def test_the_listed_architecture_must_match_the_file(vidseg, hub):
    assert vidseg("weights", "pull", "misdescribed").code == 0  # same file as tiny, right hash
    with pytest.raises(Exception, match="differs from weights.toml"):
        create_vos_model("misdescribed")


def test_unknown_checkpoint_names_the_known_ones(vidseg):
    run = vidseg("weights", "path", "nope")
    assert run.code == 2 and "unknown checkpoint 'nope'" in run.stderr and "propagate" in run.stderr


def test_every_embedded_checkpoint_matches_its_pin_and_builds():
    """The files shipped inside the package, against the real weights.toml: the sha256 pin
    holds and the listed architecture loads the tensors (a retrained file without its pin
    or config updated fails here, not in a user's run)."""
    from vidseg_cli.predict.model import ARCHITECTURES, create_predictor
    from vidseg_cli.semseg.model import SemsegNetwork, create_semseg
    from vidseg_cli.vos.regions.load import read_gates
    from vidseg_cli.vos.regions.tracker import LoadedGates

    builders = {
        "vos": create_vos_model, "predict": create_predictor, "semseg": lambda name: create_semseg(name)[0],
        "gates": lambda name: read_gates(weights_registry.entry(name).fields["model"], name),
    }
    predictors = tuple(network for network, _ in ARCHITECTURES.values())  # ours and the peer baselines
    kinds = {"vos": torch.nn.Module, "predict": predictors, "semseg": SemsegNetwork, "gates": LoadedGates}
    embedded = [e for e in weights_registry.registry().values() if e.source == "package"]
    assert {e.task for e in embedded} == set(builders)  # one shipped model per task at least
    for spec in embedded:
        assert weights_registry.file_sha256(weights_registry.weight_path(spec.name)) == spec.sha256
        built = builders[spec.task](spec.name)
        assert isinstance(built, kinds[spec.task]), spec.name
        assert spec.task != "predict" or built.arch == spec.fields["arch"], spec.name
