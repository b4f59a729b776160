"""Atomic file writes: temporary file in the same folder, fsync, rename. A crash leaves old or new, never half."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(folder: Path, need_bytes: int, what: str) -> None:
    """Fail early, with one line, if ``folder`` (or its nearest existing parent) is not writable or lacks space."""
    from xgblora_cli.common.errors import UserError

    existing = Path(folder).resolve()
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write to {existing} (permission denied)")
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise UserError(f"{what}: {free / 2**20:,.0f} MiB free on the disk of {existing}, about {need_bytes / 2**20:,.0f} MiB needed")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync (for logs like ``metrics.jsonl``, where a torn last line is tolerated)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def publish_dir(out: Path, write) -> Path:  # write: Callable[[Path], None] filling a folder
    """Build a folder with ``write(tmp)`` in a temporary sibling of ``out``, then rename it into place (an
    existing ``out`` is replaced only then): an interrupted or failed build never leaves a half-written ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out.parent)
    return out


@contextmanager
def held_lock(path: Path, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing) for the ``with`` block, across processes.

    When another process holds it, print ``waiting`` (if given) to stderr once and block until it is released.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
