"""Atomic writes: everything is written beside its destination and renamed into place, so a crash
or an error never leaves a half-written file or output folder behind.

Files and folders get the permissions the user's umask gives (``0644``/``0755`` under umask 022),
not the private ``0600``/``0700`` of ``mkstemp``/``mkdtemp``.

Replacing a folder swaps the new one in with a single atomic ``renameat2(RENAME_EXCHANGE)`` where
the kernel and file system offer it: at every instant ``path`` holds either the old or the new
content. Elsewhere it falls back to two renames (old -> ``.NAME.old``, new -> ``NAME``); a crash
between them leaves the old content in ``.NAME.old``, which the next write to ``path`` (or
:func:`recover_directory`) puts back before anything else happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .output_policy import check_replaceable

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (``0666``/``0777`` minus the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def apply_umask_tree(root: str | os.PathLike[str]) -> None:
    """:func:`apply_umask` on ``root`` and everything under it (some writers, e.g. the safetensors
    files of diffusers' ``save_pretrained``, create files ``0600`` whatever the umask)."""
    apply_umask(root, directory=True)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            apply_umask(os.path.join(folder, name), directory=True)
        for name in files:
            apply_umask(os.path.join(folder, name))


def _backup(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Finish an interrupted two-rename replacement of ``path`` (see the module docstring).

    ``path`` missing but ``.NAME.old`` present: the old content is put back. Both present: the
    replacement had completed, the stale backup is deleted.
    """
    target = Path(path)
    backup = _backup(target)
    if not backup.exists():
        return
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        logger.warning("%s: restoring %s left by an interrupted replacement", target, backup.name)
        os.replace(backup, target)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where the system cannot."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _replace_directory(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``, which exists; ``new`` is gone afterwards."""
    if _exchange(new, target):
        shutil.rmtree(new)  # now the old content
        return
    backup = _backup(target)
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(target, backup)
    os.replace(new, target)
    shutil.rmtree(backup)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``, else delete it."""
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
    )
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        if temporary.exists():
            apply_umask(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], *, overwrite: bool = False, replaces: str | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (only if ``overwrite``).

    ``replaces``: the marker file an existing ``path`` must contain to be replaced (``manifest.json``
    for output folders; :mod:`layerflow.output_policy`), so that ``overwrite`` never deletes a folder
    this program did not write.
    """
    target = Path(os.path.abspath(path))
    recover_directory(target)
    check_replaceable(target, overwrite=overwrite, marker=replaces, label=str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temporary
        apply_umask_tree(temporary)
        if target.exists():
            _replace_directory(temporary, target)
        else:
            os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_file`; returns the path."""
    with atomic_file(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int = 2, **options: Any) -> Path:
    """Write ``data`` as JSON (trailing newline) through :func:`atomic_file`; returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=indent, **options) + "\n")
