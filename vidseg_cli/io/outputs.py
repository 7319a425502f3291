"""Where results are written, without ever losing a user's data.

* An output may not be, contain or lie inside any input (the video, a frame folder, a
  mask, a mask folder, a dataset): ``--out`` set to the input's folder would otherwise
  be replaced by a folder of PNGs.
* Work goes into a hidden staging sibling that is renamed into place only when the whole
  run succeeded (same filesystem, so the rename is atomic); a failed or interrupted run
  removes it, and the parent folders it created.
* ``--force`` replaces only what vidseg wrote before: a folder carrying the ``.vidseg``
  marker (or, from before the marker, holding nothing but vidseg's output names), or a
  regular file, never a folder, in place of a report or a model file.
* Permissions follow the umask (``mkdtemp`` and ``mkstemp`` create 0700 and 0600).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from vidseg_cli import __version__
from vidseg_cli.errors import OutputError, VidsegError, os_error_text

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per output is then the user's care
    fcntl = None

MARKER = ".vidseg"
LOCK = ".lock"
# what an output folder written before the marker existed may hold
_LEGACY_OUTPUT = re.compile(r"^(\d{5}\.png|labels\.mkv|overlay\.mp4)$")


def resolve_output(target: Path, inputs: Iterable[Path] = ()) -> Path:
    """The absolute output path; refuses one that is, contains or lies inside an input."""
    resolved = Path(os.path.abspath(target)).resolve()
    if resolved.parent == resolved:
        raise VidsegError(f"cannot write the output to the filesystem root {target}")
    for given in inputs:
        source = Path(os.path.abspath(given)).resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            relation = "is" if resolved == source else ("contains" if resolved in source.parents else "lies inside")
            raise VidsegError(f"output {target} {relation} the input {given}: choose another --out")
    return resolved


# options that change how a run goes, not what it writes
NOT_SHAPING = ("force", "resume", "checkpoint_every", "checkpoint_seconds", "device")


class AlreadyComplete(Exception):  # noqa: N818 - not an error: the work is done
    """``--resume`` found the output published by a run of the same inputs and options."""

    def __init__(self, target: Path) -> None:
        super().__init__(str(target))
        self.target = target


def run_fingerprint(options: object, inputs: Iterable[Path]) -> str:
    """What must not change for an output (or a checkpoint) to be this run's: the options
    that shape the result, and each input's size and modification time (a folder's: its
    entries')."""
    shaping = dataclasses.asdict(options)
    for name in NOT_SHAPING:
        shaping.pop(name, None)
    shaping["inputs"] = [_stamp(Path(path)) for path in inputs]
    return json.dumps(shaping, sort_keys=True, default=str)


def _stamp(path: Path) -> object:
    try:
        if path.is_dir():
            entries = sorted((entry.name, *_size_and_time(entry.stat())) for entry in os.scandir(path))
            return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        return _size_and_time(path.stat())
    except OSError:
        return None  # gone or unreadable: the run itself says so


def _size_and_time(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns]


def _run_line(fingerprint: str) -> str:
    return f"run {hashlib.sha256(fingerprint.encode()).hexdigest()}"


def check_complete(target: Path, fingerprint: str, inputs: Iterable[Path] = ()) -> None:
    """For ``--resume``: raise AlreadyComplete when ``target`` was published by a run with
    this fingerprint (its marker records it). Anything else goes on to the usual checks: an
    output of other options or inputs is refused without --force, as without --resume."""
    marker = resolve_output(target, inputs) / MARKER
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if _run_line(fingerprint) in marker.read_text().splitlines():
            raise AlreadyComplete(marker.parent)


def is_vidseg_output(folder: Path) -> bool:
    """A folder vidseg published (marked), or one that holds only its output names."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if (folder / MARKER).is_file():
        return True
    return all(_LEGACY_OUTPUT.match(entry.name) for entry in folder.iterdir())


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0o666 less the umask, as ``open()`` creates a file."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """0o777 less the umask, as ``mkdir`` creates a folder."""
    return 0o777 & ~_umask()


def _refuse_folder(target: Path, force: bool) -> None:
    if not os.path.lexists(target):
        return
    if not is_vidseg_output(target):
        raise VidsegError(f"output {target} already exists and is not a vidseg output; choose another --out")
    if not force:
        raise VidsegError(f"output {target} already exists; pass --force to replace it")


def refuse_existing(target: Path, force: bool) -> None:
    """For a file output, checked before long work starts: an existing file is replaced
    only with --force, a folder (or anything that is not a regular file) never."""
    if not os.path.lexists(target):
        return
    if not target.is_file() or target.is_symlink():
        raise VidsegError(f"output {target} exists and is not a file; choose another path")
    if not force:
        raise VidsegError(f"output {target} already exists; pass --force to overwrite it")


class _CreatedParents:
    """Parent folders made for an output, removed again (if still empty) when it fails."""

    def __init__(self, parent: Path) -> None:
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        self.made: list[Path] = []
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # a concurrent run (batch --jobs) made it first: theirs
                continue
            self.made.append(folder)

    def remove(self) -> None:
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty any more: someone else uses it


class StagedOutput:
    """An output folder written atomically; ``staging`` is where the work goes.

    The staging folder is ``.NAME.partial`` beside the output, locked while a run writes
    it. A run that fails removes it, unless ``keep`` was called (a resumable checkpoint
    is in it); the next run for the same output resumes it (``resume``) or empties it.
    """

    def __init__(
        self, target: Path, force: bool, inputs: Iterable[Path] = (), resume: bool = False, run: str | None = None
    ) -> None:
        self.target = resolve_output(target, inputs)
        self.force = force
        self.run = run  # the run's fingerprint, recorded in the marker for --resume
        _refuse_folder(self.target, force)
        self.staging = self.target.parent / f".{self.target.name}.partial"
        self._lock_file = None
        self._parents: _CreatedParents | None = None
        try:
            self._parents = _CreatedParents(self.target.parent)
            fresh = not self.staging.is_dir()
            if fresh:
                self.staging.mkdir()
                os.chmod(self.staging, folder_mode())
            self._lock()
            if not fresh and not resume:
                _empty(self.staging, keep=LOCK)
        except OSError as error:
            self.abort()
            raise OutputError(f"cannot create the output {target}: {os_error_text(error)}") from None

    def _lock(self) -> None:
        """One run per output: a second one is refused while the first holds the lock."""
        self._lock_file = open(self.staging / LOCK, "a")  # noqa: SIM115 - held until commit/abort/keep
        if fcntl is None:
            return
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise VidsegError(f"another vidseg run is writing {self.target} (its folder {self.staging} is locked)") from None

    def _unlock(self) -> None:
        if self._lock_file is not None:
            (self.staging / LOCK).unlink(missing_ok=True)
            self._lock_file.close()
            self._lock_file = None

    def commit(self) -> None:
        """Mark the folder as vidseg's and rename it into place."""
        try:
            self._unlock()
            recorded = f"{_run_line(self.run)}\n" if self.run is not None else ""
            (self.staging / MARKER).write_text(
                f"written by vidseg {__version__}; `--force` may replace this folder\n{recorded}"
            )
            old = None
            if os.path.lexists(self.target):
                _refuse_folder(self.target, self.force)  # it may have appeared while running
                old = self.target.with_name(f".{self.target.name}.{os.getpid()}.old")
                os.replace(self.target, old)
            os.replace(self.staging, self.target)
        except OSError as error:
            self.abort()
            raise OutputError(f"cannot publish the output {self.target}: {os_error_text(error)}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def keep(self) -> None:
        """Leave the staging folder for a resumed run."""
        self._unlock()

    def abort(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._parents is not None:
            self._parents.remove()


def _empty(folder: Path, keep: str) -> None:
    """A crashed run's staging folder, emptied for a fresh start."""
    for entry in folder.iterdir():
        if entry.name == keep:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


class StagedFile:
    """A file output written atomically: fill ``staging``, then ``commit`` renames it
    over ``target`` (checked up front: never an input, an existing file only with force)."""

    def __init__(self, target: Path, force: bool, inputs: Iterable[Path] = (), resumable: bool = False) -> None:
        self.given = target
        self.target = resolve_output(target, inputs)
        self.force = force
        refuse_existing(self.target, force)
        self._closers: list[Callable[[], None]] = []
        try:
            self._parents = _CreatedParents(self.target.parent)
            if resumable:  # a name the resumed run finds again
                name = str(self.target.parent / f".{self.target.name}.partial{self.target.suffix}")
                if not os.path.exists(name):
                    Path(name).touch()
            else:
                handle, name = tempfile.mkstemp(
                    prefix=f".{self.target.name}.", suffix=f".partial{self.target.suffix}", dir=self.target.parent
                )
                os.close(handle)
        except OSError as error:
            raise OutputError(f"cannot write {target}: {os_error_text(error)}") from None
        self.staging = Path(name)

    def on_close(self, close: Callable[[], None]) -> None:
        """Run ``close`` (flush a handle) before the file is published or removed."""
        self._closers.append(close)

    def _close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            close()

    def commit(self) -> None:
        try:
            self._close()
            os.chmod(self.staging, file_mode())
            os.replace(self.staging, self.target)
        except OSError as error:
            self.abort()
            raise OutputError(f"cannot write {self.given}: {os_error_text(error)}") from None

    def abort(self) -> None:
        try:
            self._close()
        except OSError:
            pass  # the write already failed; the file goes anyway
        self.staging.unlink(missing_ok=True)
        self._parents.remove()

    def keep(self) -> None:
        """Leave the staged file for a resumed run."""
        with contextlib.suppress(OSError):
            self._close()


def write_file_atomically(
    target: Path, write: Callable[[Path], None], force: bool, inputs: Iterable[Path] = ()
) -> None:
    """``write(tmp)`` fills a hidden sibling file that then replaces ``target`` in one rename."""
    staged = StagedFile(target, force, inputs)
    try:
        write(staged.staging)
    except OSError as error:
        staged.abort()
        raise OutputError(f"cannot write {target}: {os_error_text(error)}") from None
    except BaseException:
        staged.abort()
        raise
    staged.commit()
