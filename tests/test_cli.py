"""The command itself: entry points, help, completions."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidseg_cli.cli.completions import COMPLETE_VAR, SHELLS, completion_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_scripts_are_current(shell):
    """Regenerate with: python -m vidseg_cli.cli.completions completions"""
    committed = (ROOT / "completions" / SHELLS[shell]).read_text()
    assert committed == completion_script(shell), "completions/ is stale"


def test_completion_offers_policy_names():
    env = dict(os.environ, COMP_WORDS="vidseg segment --memory ", COMP_CWORD="3", **{COMPLETE_VAR: "complete_bash"})
    result = subprocess.run(
        [sys.executable, "-m", "vidseg_cli"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["stremn", "stm", "first-last", "fifo"]


def test_python_dash_m_runs_and_exits_2_on_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vidseg_cli", "segment", str(tmp_path / "missing.mp4"), "--mask", "m.png"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: mask not found: m.png"]


def test_version_and_help(vidseg):
    assert vidseg("--version").stdout.startswith("vidseg ")
    help_text = vidseg("segment", "--help").stdout
    for option in ("--mask", "--memory", "--slots", "--update", "--every", "--size", "--format", "--force"):
        assert option in help_text


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["segment", "--help"], ["bench", "--help"], ["train"]])
def test_help_and_completion_do_not_import_torch(args):
    """What keeps `vidseg --help` and Tab completion near 0.3 s instead of 4 s."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('TORCH\\n' if 'torch' in sys.modules else 'LIGHT\\n'))\n"
        "from vidseg_cli.cli.main import main\n"
        f"main({args!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    expected = "TORCH" if args == ["train"] else "LIGHT"  # a group's commands load when it is named
    assert result.stderr.strip().splitlines()[-1] == expected
    env = dict(os.environ, COMP_WORDS="vidseg segment --memory ", COMP_CWORD="3", **{COMPLETE_VAR: "complete_bash"})
    completion = subprocess.run([sys.executable, "-c", script.replace(f"main({args!r})", "main()")],
                                env=env, capture_output=True, text=True, timeout=60)
    assert completion.stderr.strip().splitlines()[-1] == "LIGHT"


def _commands(node, path=()):
    """(path, click command) for every command under ``node``, lazy groups included."""
    children = getattr(node, "commands", None)
    if children is None:
        yield path, node
        return
    for name in sorted(children):
        yield from _commands(children[name], (*path, name))


def test_every_bracketed_word_in_the_help_source_reaches_the_rendered_help(vidseg):
    """Typer renders help as Rich markup, where ``vidseg[onnx]`` loses ``[onnx]`` (a style
    tag): every ``[word]`` a help text holds (extras, placeholders) must be printed."""
    import re

    from vidseg_cli.cli.app import command

    bracketed = re.compile(r"\\?\[([a-z][\w-]*)\]")
    checked = 0
    for path, node in _commands(command()):
        texts = [node.help or ""] + [getattr(param, "help", None) or "" for param in node.params]
        words = {match for text in texts for match in bracketed.findall(text)}
        if not words:
            continue
        rendered = " ".join(vidseg(*path, "--help").stdout.split())
        for word in words:
            assert f"[{word}]" in rendered, f"vidseg {' '.join(path)} --help drops [{word}]"
            checked += 1
        assert 'install "vidseg")' not in rendered and 'install "vidseg".' not in rendered
    assert checked >= 3  # segment and semseg name [onnx], train semseg [lite1]


def test_a_bundle_of_flags_is_taken_one_by_one_and_handed_over_whole():
    import typer
    from typer.testing import CliRunner

    from vidseg_cli.cli import flags

    seen = {}
    app = typer.Typer()

    @app.command()
    @flags.taking(flags.RunFlags, checkpoint_every=7)
    def train(steps: int = 1, run: flags.RunFlags = flags.RunFlags()) -> None:
        seen.update(steps=steps, run=run)

    @app.command()
    def other() -> None: ...

    result = CliRunner().invoke(app, ["train", "--steps", "3", "--resume", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen == {"steps": 3, "run": flags.RunFlags(checkpoint_every=7, device=flags.Device.cpu, resume=True)}
    help_text = CliRunner().invoke(app, ["train", "--help"]).output
    assert help_text.index("--steps") < help_text.index("--checkpoint-every") < help_text.index("--force")
    assert "[default: 7]" in help_text
