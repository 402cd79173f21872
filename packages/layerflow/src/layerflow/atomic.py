"""Atomic writes: everything is written beside its destination and renamed into place, so a crash
or an error never leaves a half-written file or output folder behind.

Files and folders get the permissions the user's umask gives (``0644``/``0755`` under umask 022),
not the private ``0600``/``0700`` of ``mkstemp``/``mkdtemp``.

Whether a folder may be replaced is decided twice: at the start (to fail before any work) and at
the end against what is there then, so a folder that appeared meanwhile is never replaced without
``overwrite``. A new folder goes into place with ``renameat2(RENAME_NOREPLACE)``; replacing one
swaps the new one in with a single atomic ``renameat2(RENAME_EXCHANGE)`` where the kernel and file
system offer it: at every instant ``path`` holds either the old or the new content. Elsewhere it
falls back to two renames (old -> ``.NAME.layerflow-backup/content``, new -> ``NAME``); the backup
folder carries a record saying it is ours, so a user folder that merely looks like a backup is
never taken for one. A crash between the renames leaves the old content there, which the next write
to ``path`` (or :func:`recover_directory`) puts back before anything else happens. Every folder
write holds the folder's lock (:mod:`layerflow.locking`).
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

from .locking import folder_lock
from .output_policy import OutputRefused, check_replaceable, register_marker, written_by_layerflow

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
BACKUP_SUFFIX = ".layerflow-backup"
BACKUP_RECORD = "layerflow-backup.json"
BACKUP_FORMAT = "layerflow-backup"
register_marker(BACKUP_RECORD, lambda record: record.get("format") == BACKUP_FORMAT)


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
    return target.with_name(f".{target.name}{BACKUP_SUFFIX}")


def _is_our_backup(backup: Path, target: Path) -> bool:
    if not (backup.is_dir() and written_by_layerflow(backup, BACKUP_RECORD)):
        return False
    return json.loads((backup / BACKUP_RECORD).read_text()).get("of") == target.name


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Finish an interrupted two-rename replacement of ``path`` (see the module docstring).

    Only a backup folder with our record naming ``path`` counts. ``path`` missing: the old content
    is put back. ``path`` present: the replacement had completed, the stale backup is deleted.
    """
    target = Path(path)
    backup = _backup(target)
    if not _is_our_backup(backup, target):
        return
    content = backup / "content"
    if not target.exists() and content.is_dir():
        logger.warning("%s: restoring the old content left by an interrupted replacement", target)
        os.replace(content, target)
    shutil.rmtree(backup, ignore_errors=True)


def _renameat2(first: Path, second: Path, flags: int) -> int | None:
    """``renameat2``'s errno (0 on success); ``None`` where the system or file system lacks it."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return None
    if rename(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), flags) == 0:
        return 0
    code = ctypes.get_errno()
    return None if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP) else code


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where the system cannot."""
    code = _renameat2(first, second, _RENAME_EXCHANGE)
    if code not in (0, None):
        raise OSError(code, os.strerror(code), str(second))
    return code == 0


def _rename_new(new: Path, target: Path) -> bool:
    """Rename ``new`` to ``target`` unless something is at ``target`` (then False), atomically where
    the system has ``RENAME_NOREPLACE``."""
    code = _renameat2(new, target, _RENAME_NOREPLACE)
    if code is None:
        if target.exists():
            return False
        try:
            os.rename(new, target)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        return True
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        return False
    if code:
        raise OSError(code, os.strerror(code), str(target))
    return True


def _replace_directory(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``, which exists; ``new`` is gone afterwards."""
    if _exchange(new, target):
        shutil.rmtree(new)  # now the old content
        return
    backup = _backup(target)
    recover_directory(target)  # an earlier backup of ours is stale: target exists
    try:
        backup.mkdir()
    except FileExistsError:  # a folder of that name that is not our backup: touch nothing
        raise OutputRefused(
            f"{backup} exists and is not layerflow's: move it away to replace {target}"
        ) from None
    (backup / BACKUP_RECORD).write_text(json.dumps({"format": BACKUP_FORMAT, "of": target.name}) + "\n")
    os.replace(target, backup / "content")
    os.replace(new, target)
    shutil.rmtree(backup)


def _put_in_place(new: Path, target: Path, *, overwrite: bool, replaces: str | None, label: str) -> None:
    """The end-time decision: ``new`` goes to ``target`` if nothing is there now, else replaces what
    is there only if that may be replaced now (``overwrite``, and ``replaces`` says it is ours)."""
    if _rename_new(new, target):
        return
    if not overwrite:
        raise OutputRefused(f"{label} appeared while this ran: it was not replaced (that needs overwrite)")
    check_replaceable(target, overwrite=overwrite, marker=replaces, label=label)
    _replace_directory(new, target)


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

    ``replaces``: the marker file an existing ``path`` must contain, as layerflow writes it, to be
    replaced (``manifest.json`` for output folders; :mod:`layerflow.output_policy`), so that
    ``overwrite`` never deletes a folder this program did not write. Checked again at the end,
    under the folder's lock (:mod:`layerflow.locking`).
    """
    target = Path(os.path.abspath(path))
    with folder_lock(target):
        recover_directory(target)
        check_replaceable(target, overwrite=overwrite, marker=replaces, label=str(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            yield temporary
            apply_umask_tree(temporary)
            _put_in_place(temporary, target, overwrite=overwrite, replaces=replaces, label=str(path))
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
