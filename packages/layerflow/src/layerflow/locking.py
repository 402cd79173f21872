"""One writer at a time per folder: an ``fcntl`` lock on a file beside the folder.

Two ``layerflow`` commands writing the same output folder, or two trainings into one output root,
would otherwise both report success with mixed results. :func:`folder_lock` holds an exclusive
``flock`` on ``.NAME.layerflow-lock`` next to ``NAME`` for as long as the write runs; a second
writer fails at once with :class:`FolderLocked`, naming the holder's pid. The kernel drops the lock
when its process dies, so a lock file left by a crashed process is stale by construction: the next
writer takes it over (and logs whose it was). Locks are re-entrant within a process, so a command
that locks its output can call writers that lock it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .output_policy import OutputRefused

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".layerflow-lock"
_held: set[Path] = set()


class FolderLocked(OutputRefused):
    """Another process is writing the folder (a one-line message naming it)."""


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """The lock file of ``folder``: hidden, beside it, with a name no user picks."""
    target = Path(os.path.abspath(folder))
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().split()[0]
    except (OSError, IndexError):
        return "another layerflow process"
    return f"layerflow process {pid}"


def _acquire(path: Path) -> int:
    """An open descriptor holding the lock on ``path`` (the file as it is on disk now)."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise FolderLocked(
                    f"{path.with_name(path.name[1 : -len(LOCK_SUFFIX)])} is being written by "
                    f"{_holder(path)}: wait for it to finish, or choose another folder"
                ) from None
            raise
        try:  # the holder before us may have removed the file between our open and our lock
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the write lock of ``folder`` (see the module docstring); raises :class:`FolderLocked`."""
    path = lock_path(folder)
    if path in _held:  # this process holds it already: the outer holder releases it
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = _acquire(path)
    except FolderLocked:
        raise
    except OSError as error:
        raise OutputRefused(f"cannot write {folder}: cannot lock it ({error.strerror or error})") from None
    previous = os.pread(descriptor, 64, 0).decode(errors="replace").split()
    if previous and previous[0] != str(os.getpid()):
        logger.info("%s: taking over the stale lock of process %s (no longer running)", path, previous[0])
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    _held.add(path)
    try:
        yield
    finally:
        _held.discard(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(descriptor)
