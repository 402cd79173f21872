"""Content checksums of precompute cache shards: a damaged shard is found when the cache is opened.

Fingerprints say whether a cache was made from these encoders and data; they say nothing about the
bytes on disk. A shard zeroed or truncated afterwards (a bad disk, a full disk during a copy, a
sync tool) would otherwise train silently on garbage, so every shard's sha256 is kept in the manifest
and compared on open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def damaged_shards(cache_dir: Path, shards: Iterable[str], checksums: dict[str, str]) -> dict[str, str]:
    """Shard name -> what is wrong with it (missing, or content differing from its recorded checksum)."""
    damaged = {}
    for name in shards:
        path = cache_dir / name
        if not path.is_file():
            damaged[name] = "missing"
        elif name not in checksums:
            damaged[name] = "no checksum recorded"
        elif file_sha256(path) != checksums[name]:
            damaged[name] = f"content differs from its sha256 ({path.stat().st_size} bytes)"
    return damaged
