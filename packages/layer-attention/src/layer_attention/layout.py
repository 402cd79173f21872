"""`SegmentLayout`: which segment of a concatenated sequence may attend to which.

A LayerFlow sequence is the text tokens of every layer prompt followed by the video tokens of every
layer clip. Attention between them is described at segment granularity (an S x S table), so every
derived structure (tile lists for the kernel, query groups for the gather fallbacks, a FlexAttention
``BlockMask``) is computed from segment boundaries, never from an N x N mask, and cached on the
layout: like FlexAttention's ``BlockMask``, a layout is built once and threaded through all layers.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

#: Tile-pair classes in :attr:`TileLists.classes`.
SKIP, PARTIAL, FULL = 0, 1, 2

#: ``SegmentLayout.key``: segment lengths and the allowed rows (``None`` for full attention).
LayoutKey = tuple[tuple[int, ...], tuple[tuple[bool, ...], ...] | None]


@dataclass(frozen=True)
class CompressedTiles:
    """CSR list of tiles: the tiles of row ``r`` are ``indices[offsets[r]:offsets[r + 1]]``.

    The same tiles also as runs of consecutive tiles: run ``k`` of row ``r`` (``run_offsets[r] <= k <
    run_offsets[r + 1]``) covers tiles ``run_starts[k] <= tile < run_ends[k]``. Segments are
    contiguous, so a row's full tiles form a few runs, and a kernel walking runs has affine addresses
    inside each run (what Triton's software pipelining wants) instead of an index load per tile.
    """

    offsets: torch.Tensor  # int32 [rows + 1]
    indices: torch.Tensor  # int32 [nnz]
    run_offsets: torch.Tensor  # int32 [rows + 1]
    run_starts: torch.Tensor  # int32 [runs]
    run_ends: torch.Tensor  # int32 [runs], exclusive

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> CompressedTiles:
        rows, cols = mask.nonzero(as_tuple=True)  # row-major, so columns are sorted within each row
        before = torch.zeros_like(mask)
        before[:, 1:] = mask[:, :-1]
        after = torch.zeros_like(mask)
        after[:, :-1] = mask[:, 1:]
        run_rows, run_starts = (mask & ~before).nonzero(as_tuple=True)
        _, run_lasts = (mask & ~after).nonzero(as_tuple=True)
        return cls(
            _row_offsets(rows, mask.shape[0]),
            cols.to(torch.int32),
            _row_offsets(run_rows, mask.shape[0]),
            run_starts.to(torch.int32),
            (run_lasts + 1).to(torch.int32),
        )

    def row(self, r: int) -> list[int]:
        return self.indices[int(self.offsets[r]) : int(self.offsets[r + 1])].tolist()

    def runs(self, r: int) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` tile runs of row ``r`` (end exclusive)."""
        lo, hi = int(self.run_offsets[r]), int(self.run_offsets[r + 1])
        return list(zip(self.run_starts[lo:hi].tolist(), self.run_ends[lo:hi].tolist(), strict=True))

    def to(self, device: torch.device | str) -> CompressedTiles:
        return CompressedTiles(
            *(
                t.to(device)
                for t in (self.offsets, self.indices, self.run_offsets, self.run_starts, self.run_ends)
            )
        )


def _row_offsets(rows: torch.Tensor, count: int) -> torch.Tensor:
    offsets = torch.zeros(count + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=count), 0)
    return offsets


@dataclass(frozen=True)
class TileLists:
    """Tile-level sparsity of a layout for one (square) block size.

    ``kv_full[i]`` / ``kv_partial[i]`` list the key tiles that query tile ``i`` visits without and
    with per-element masking; ``q_full[j]`` / ``q_partial[j]`` are the transposes, which the dK/dV
    backward walks. A key tile is partial when it straddles a segment boundary whose sides are
    treated differently, or when it holds the ragged end of the sequence; tiles not listed are skipped.
    """

    block_size: int
    num_tiles: int
    classes: torch.Tensor  # int8 [T, T]: SKIP / PARTIAL / FULL per (query tile, key tile)
    kv_full: CompressedTiles
    kv_partial: CompressedTiles
    q_full: CompressedTiles
    q_partial: CompressedTiles
    #: int32 [T]: query tiles by decreasing work (visited key tiles), the launch order of the
    #: forward and dQ programs, so the heaviest rows start first and short ones fill the tail.
    q_order: torch.Tensor
    #: int32 [T]: key tiles by decreasing work, the launch order of the dK/dV programs.
    kv_order: torch.Tensor

    @property
    def visited_fraction(self) -> float:
        """Fraction of tile pairs the kernel computes (1.0 for full attention)."""
        return float((self.classes != SKIP).float().mean())

    def to(self, device: torch.device | str) -> TileLists:
        return TileLists(
            self.block_size,
            self.num_tiles,
            self.classes,
            self.kv_full.to(device),
            self.kv_partial.to(device),
            self.q_full.to(device),
            self.q_partial.to(device),
            self.q_order.to(device),
            self.kv_order.to(device),
        )


@dataclass(frozen=True)
class QueryGroup:
    """Query segments that share one allowed-key set, and that set as contiguous token ranges."""

    query_segments: tuple[int, ...]
    key_segments: tuple[int, ...]
    query_ranges: tuple[tuple[int, int], ...]
    key_ranges: tuple[tuple[int, int], ...]


def _work_order(visited: torch.Tensor) -> torch.Tensor:
    """Tile indices by decreasing count of visited tiles (ties in index order), int32."""
    return torch.sort(-visited.sum(1), stable=True).indices.to(torch.int32)


def _merge_ranges(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


class SegmentLayout:
    """Segment lengths of one concatenated sequence and the segment-level attention table.

    Args:
        lengths: token count of every segment, in sequence order (any positive ints).
        allowed: optional S x S table (nested sequences or a bool tensor); ``allowed[i][j]`` means
            query segment ``i`` may attend key segment ``j``. ``None`` means full attention.
    """

    def __init__(
        self, lengths: Sequence[int], allowed: Sequence[Sequence[bool]] | torch.Tensor | None = None
    ):
        lengths = list(lengths)
        if not lengths:
            raise ValueError("SegmentLayout needs at least one segment; got no lengths")
        for index, length in enumerate(lengths):
            if isinstance(length, bool) or not isinstance(length, int):
                raise TypeError(f"segment {index} length must be an int, got {type(length).__name__}")
            if length <= 0:
                raise ValueError(
                    f"segment {index} has length {length}; every segment length must be positive"
                )
        self.lengths: tuple[int, ...] = tuple(lengths)
        count = len(lengths)
        table: torch.Tensor | None = None
        if allowed is not None:
            table = torch.as_tensor(allowed).detach().to("cpu")
            if table.dtype != torch.bool:
                if not torch.all((table == 0) | (table == 1)):
                    raise ValueError("allowed must hold booleans (or 0/1)")
                table = table.to(torch.bool)
            if table.shape != (count, count):
                raise ValueError(
                    f"allowed must be a {count}x{count} table for {count} segments, got shape {tuple(table.shape)}"
                )
            blind = [i for i in range(count) if not bool(table[i].any())]
            if blind:
                raise ValueError(
                    f"query segment(s) {blind} may attend no key segment; every row of allowed needs a True"
                )
            if bool(table.all()):
                table = None  # full attention: one canonical form, so the unmasked fast paths apply
        self._allowed = table
        #: Hashable identity (lengths, allowed rows or None): equal keys describe the same attention.
        self.key: LayoutKey = (
            self.lengths,
            None if table is None else tuple(tuple(bool(x) for x in row) for row in table.tolist()),
        )

    #: Layouts by key, most recently used last (see :meth:`cached`).
    _cache: ClassVar[OrderedDict[LayoutKey, SegmentLayout]] = OrderedDict()
    _cache_size: ClassVar[int] = 64
    _cache_stats: ClassVar[dict[str, int]] = {"hits": 0, "misses": 0}

    @classmethod
    def cached(
        cls, lengths: Sequence[int], allowed: Sequence[Sequence[bool]] | torch.Tensor | None = None
    ) -> SegmentLayout:
        """The shared layout for these lengths and table: built once per shape, then reused.

        Every derived structure (tile lists, their device copies, segment ids, query groups) is
        cached on the layout, so callers that go through here (the CogVideoX processor, LayerFlow's
        pipeline and trainer) build them once per sequence shape for all blocks, denoising steps,
        training steps and gradient-checkpointing recomputes. Keeps the 64 most recently used.
        """
        layout: SegmentLayout | None = None
        if allowed is None:
            key: LayoutKey = (tuple(lengths), None)  # no table to normalise: look up without building
        else:
            layout = cls(lengths, allowed)
            key = layout.key
        found = cls._cache.get(key)
        if found is not None:
            cls._cache.move_to_end(key)
            cls._cache_stats["hits"] += 1
            return found
        cls._cache_stats["misses"] += 1
        layout = layout or cls(lengths)
        cls._cache[layout.key] = layout
        while len(cls._cache) > cls._cache_size:
            cls._cache.popitem(last=False)
        return layout

    @classmethod
    def cache_info(cls) -> dict[str, int]:
        """Hits, misses and size of the :meth:`cached` store (misses = layouts built)."""
        return {**cls._cache_stats, "size": len(cls._cache)}

    @classmethod
    def cache_clear(cls) -> None:
        """Forget every cached layout and reset the counters."""
        cls._cache.clear()
        cls._cache_stats.update(hits=0, misses=0)

    @classmethod
    def from_key(cls, key: LayoutKey) -> SegmentLayout:
        """The :meth:`cached` layout of a :attr:`key`."""
        return cls.cached(key[0], key[1])

    # ------------------------------------------------------------------ basic facts
    @property
    def num_segments(self) -> int:
        return len(self.lengths)

    @property
    def seq_len(self) -> int:
        return sum(self.lengths)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Segment start positions plus the total length: ``offsets[s]:offsets[s + 1]`` is segment ``s``."""
        out = [0]
        for length in self.lengths:
            out.append(out[-1] + length)
        return tuple(out)

    @property
    def allowed(self) -> torch.Tensor:
        """The S x S bool table (all True for full attention)."""
        if self._allowed is None:
            return torch.ones(self.num_segments, self.num_segments, dtype=torch.bool)
        return self._allowed.clone()

    @property
    def is_full(self) -> bool:
        return self._allowed is None

    @property
    def is_block_diagonal(self) -> bool:
        """Every segment attends only to itself."""
        return self._allowed is not None and bool(
            torch.equal(self._allowed, torch.eye(self.num_segments, dtype=torch.bool))
        )

    @functools.cached_property
    def allowed_pairs(self) -> int:
        """Number of allowed (query, key) token pairs, from segment lengths."""
        sizes = torch.tensor(self.lengths, dtype=torch.float64)
        return int((sizes[:, None] * sizes[None, :] * self.allowed.double()).sum())

    @property
    def density(self) -> float:
        """Allowed pairs / N^2."""
        return self.allowed_pairs / self.seq_len**2

    def __repr__(self) -> str:
        lengths = list(self.lengths)
        mask = "full" if self.is_full else f"{int(self.allowed.sum())}/{self.num_segments**2} segment pairs"
        return (
            f"SegmentLayout(lengths={lengths}, N={self.seq_len}, allowed={mask}, density={self.density:.3f})"
        )

    def __str__(self) -> str:
        rows = [repr(self)]
        if not self.is_full:
            table = self.allowed
            for i, length in enumerate(self.lengths):
                marks = "".join("#" if table[i, j] else "." for j in range(self.num_segments))
                rows.append(f"  q{i:<2} ({length:>6} tokens) {marks}")
        return "\n".join(rows)

    # ------------------------------------------------------------------ derived structures (cached)
    @functools.cached_property
    def _derived(self) -> dict[Any, Any]:
        return {}

    def _segment_range_of_tiles(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First and last segment index touched by every tile of ``block_size`` tokens."""
        num_tiles = -(-self.seq_len // block_size)
        starts = torch.arange(num_tiles, dtype=torch.int64) * block_size
        last = torch.clamp(starts + block_size, max=self.seq_len) - 1
        ends = torch.tensor(self.offsets[1:], dtype=torch.int64)  # exclusive ends
        return torch.bucketize(starts, ends, right=True), torch.bucketize(last, ends, right=True)

    def tiles(self, block_size: int) -> TileLists:
        """Full / partial key tiles per query tile (and transposed), cached per block size.

        Uses a 2-D prefix sum over the S x S table so each tile pair is classified in O(1) from the
        segment ranges the two tiles touch: T x T work, never N x N.
        """
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        key = ("tiles", block_size)
        if key not in self._derived:
            self._derived[key] = self._build_tiles(block_size)
        tiles: TileLists = self._derived[key]
        return tiles

    def _build_tiles(self, block_size: int) -> TileLists:
        first, last = self._segment_range_of_tiles(block_size)
        prefix = torch.zeros(self.num_segments + 1, self.num_segments + 1, dtype=torch.int64)
        prefix[1:, 1:] = self.allowed.long().cumsum(0).cumsum(1)
        a0, a1 = first[:, None], last[:, None] + 1
        b0, b1 = first[None, :], last[None, :] + 1
        count = prefix[a1, b1] - prefix[a0, b1] - prefix[a1, b0] + prefix[a0, b0]
        total = (a1 - a0) * (b1 - b0)
        full = count == total
        if self.seq_len % block_size:
            full[:, -1] = False  # the ragged key tail needs the bounds mask
        classes = torch.where(count == 0, SKIP, torch.where(full, FULL, PARTIAL)).to(torch.int8)
        visited = classes != SKIP
        return TileLists(
            block_size=block_size,
            num_tiles=len(first),
            classes=classes,
            kv_full=CompressedTiles.from_mask(classes == FULL),
            kv_partial=CompressedTiles.from_mask(classes == PARTIAL),
            q_full=CompressedTiles.from_mask((classes == FULL).T),
            q_partial=CompressedTiles.from_mask((classes == PARTIAL).T),
            q_order=_work_order(visited),
            kv_order=_work_order(visited.T),
        )

    def device_tiles(self, block_size: int, device: torch.device) -> TileLists:
        """:meth:`tiles` moved to ``device`` (cached, so a forward pass does no host-to-device copies)."""
        key = ("tiles", block_size, str(device))
        if key not in self._derived:
            self._derived[key] = self.tiles(block_size).to(device)
        tiles: TileLists = self._derived[key]
        return tiles

    def segment_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int32 [N]: the segment index of every token (cached per device)."""
        key = ("segment_ids", str(device))
        if key not in self._derived:
            ids = torch.repeat_interleave(
                torch.arange(self.num_segments, dtype=torch.int32), torch.tensor(self.lengths)
            )
            self._derived[key] = ids.to(device)
        ids_out: torch.Tensor = self._derived[key]
        return ids_out

    def allowed_table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The allowed table as int32 [S, S] on ``device`` (cached), for kernels to index."""
        key = ("allowed", str(device))
        if key not in self._derived:
            self._derived[key] = self.allowed.to(torch.int32).contiguous().to(device)
        table: torch.Tensor = self._derived[key]
        return table

    @functools.cached_property
    def query_groups(self) -> tuple[QueryGroup, ...]:
        """Query segments grouped by identical allowed-key rows (order of first appearance)."""
        table = self.allowed
        groups: dict[tuple[bool, ...], list[int]] = {}
        for i in range(self.num_segments):
            groups.setdefault(tuple(bool(x) for x in table[i]), []).append(i)
        out = []
        for row, queries in groups.items():
            keys = tuple(j for j, ok in enumerate(row) if ok)
            out.append(
                QueryGroup(
                    query_segments=tuple(queries),
                    key_segments=keys,
                    query_ranges=_merge_ranges([(self.offsets[i], self.offsets[i + 1]) for i in queries]),
                    key_ranges=_merge_ranges([(self.offsets[j], self.offsets[j + 1]) for j in keys]),
                )
            )
        return tuple(out)

    # ------------------------------------------------------------------ exports
    def dense_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool [N, N] token mask (True = attend). O(N^2) memory: for tests and references only."""
        ids = self.segment_ids(device).long()
        return self.allowed.to(device)[ids[:, None], ids[None, :]]

    def to_block_mask(self, block_size: int = 128, device: torch.device | str = "cpu") -> BlockMask:
        """A FlexAttention ``BlockMask`` built from :meth:`tiles` (no mask_mod evaluation over N x N)."""
        try:
            from torch.nn.attention.flex_attention import BlockMask
        except ImportError as error:  # torch < 2.5
            raise RuntimeError(f"this torch ({torch.__version__}) has no FlexAttention BlockMask") from error
        tiles = self.tiles(block_size)
        ids = self.segment_ids(device)
        table = self.allowed.to(device)

        def mask_mod(
            b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
        ) -> torch.Tensor:
            return table[ids[q_idx], ids[kv_idx]]

        def padded(classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            counts = classes.sum(1).to(torch.int32)
            # stable sort puts the listed tile indices first, in increasing order
            order = torch.sort((~classes).to(torch.int8), dim=1, stable=True).indices.to(torch.int32)
            return counts[None, None].to(device), order[None, None].contiguous().to(device)

        partial_counts, partial_indices = padded(tiles.classes == PARTIAL)
        full_counts, full_indices = padded(tiles.classes == FULL)
        return BlockMask.from_kv_blocks(
            partial_counts,
            partial_indices,
            full_counts,
            full_indices,
            BLOCK_SIZE=block_size,
            mask_mod=mask_mod,
            seq_lengths=(self.seq_len, self.seq_len),
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def block_diagonal(cls, lengths: Sequence[int]) -> SegmentLayout:
        """Every segment attends only to itself."""
        return cls(lengths, torch.eye(len(lengths), dtype=torch.bool))
