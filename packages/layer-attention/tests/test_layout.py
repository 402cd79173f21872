"""SegmentLayout: validation, tile lists against a brute-force oracle, exports, LayerFlow presets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layer_attention import SegmentLayout
from layer_attention.layout import FULL, PARTIAL, SKIP
from layer_attention.testing import cogvideox_clip_tokens, conditional_layout, layerflow_layout


@pytest.mark.parametrize(
    ("lengths", "allowed", "error", "match"),
    [
        ([], None, ValueError, "at least one segment"),
        ([3, 0], None, ValueError, "segment 1 has length 0"),
        ([3, -2], None, ValueError, "segment 1 has length -2"),
        ([3, 2.5], None, TypeError, "segment 1 length must be an int"),
        ([3, 4], [[True, False]], ValueError, "2x2 table"),
        ([3, 4], [[True, True, True], [True, True, True], [True, True, True]], ValueError, "2x2 table"),
        ([3, 4], [[True, False], [False, False]], ValueError, r"query segment\(s\) \[1\] may attend no key"),
        ([3, 4], [[2, 0], [1, 1]], ValueError, "booleans"),
    ],
)
def test_invalid_layouts_raise_clear_errors(lengths, allowed, error, match):
    with pytest.raises(error, match=match):
        SegmentLayout(lengths, allowed)


def test_all_true_table_is_full_attention_and_repr_is_readable():
    layout = SegmentLayout([5, 7], [[True, True], [True, True]])
    assert layout.is_full and layout.seq_len == 12 and layout.density == 1.0
    masked = SegmentLayout([5, 7], [[True, False], [True, True]])
    assert (
        repr(masked) == "SegmentLayout(lengths=[5, 7], N=12, allowed=3/4 segment pairs, density=0.757)"
    )  # (144 - 5 * 7) / 144
    assert "q1  (     7 tokens) ##" in str(masked)
    assert SegmentLayout.block_diagonal([5, 7]).is_block_diagonal and not masked.is_block_diagonal


def _oracle_classes(layout: SegmentLayout, block: int) -> torch.Tensor:
    """Tile classes straight from the dense mask (what the analytic prefix-sum version must equal)."""
    mask = layout.dense_mask()
    n = layout.seq_len
    tiles = -(-n // block)
    out = torch.empty(tiles, tiles, dtype=torch.int8)
    for i in range(tiles):
        for j in range(tiles):
            sub = mask[i * block : (i + 1) * block, j * block : (j + 1) * block]
            ragged = (j + 1) * block > n
            if not sub.any():
                out[i, j] = SKIP
            elif sub.all() and not ragged:
                out[i, j] = FULL
            else:
                out[i, j] = PARTIAL
    return out


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=6),
    bits=st.lists(st.booleans(), min_size=36, max_size=36),
    block=st.sampled_from([8, 16, 32, 64]),
)
def test_tile_lists_match_dense_mask_oracle(lengths, bits, block):
    count = len(lengths)
    allowed = torch.tensor(bits[: count * count]).view(count, count)
    allowed[torch.arange(count), torch.arange(count)] = True  # every row attends somewhere
    layout = SegmentLayout(lengths, allowed)
    tiles = layout.tiles(block)
    assert torch.equal(tiles.classes, _oracle_classes(layout, block))
    for i in range(tiles.num_tiles):
        assert tiles.kv_full.row(i) == (tiles.classes[i] == FULL).nonzero().flatten().tolist()
        assert tiles.kv_partial.row(i) == (tiles.classes[i] == PARTIAL).nonzero().flatten().tolist()
        assert tiles.q_full.row(i) == (tiles.classes[:, i] == FULL).nonzero().flatten().tolist()
        assert tiles.q_partial.row(i) == (tiles.classes[:, i] == PARTIAL).nonzero().flatten().tolist()
    assert layout.allowed_pairs == int(layout.dense_mask().sum())


def test_tile_lists_are_cached_per_block_size_and_skip_disallowed_tiles():
    layout = SegmentLayout.block_diagonal([256, 256])
    assert layout.tiles(128) is layout.tiles(128)
    assert layout.tiles(64) is not layout.tiles(128)
    assert layout.tiles(128).visited_fraction == 0.5
    assert layout.device_tiles(128, torch.device("cpu")) is layout.device_tiles(128, torch.device("cpu"))


def test_query_groups_partition_the_segments():
    allowed = [[1, 0, 1, 0], [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]]
    layout = SegmentLayout([3, 4, 5, 6], torch.tensor(allowed, dtype=torch.bool))
    groups = {g.query_segments: g for g in layout.query_groups}
    assert set(groups) == {(0, 2), (1,), (3,)}
    assert groups[(0, 2)].query_ranges == ((0, 3), (7, 12))
    assert groups[(0, 2)].key_ranges == ((0, 3), (7, 12))
    assert groups[(1,)].key_ranges == ((0, 18),)


def test_block_mask_matches_dense_mask():
    pytest.importorskip("torch.nn.attention.flex_attention")
    layout = conditional_layout(2, 3, 40, condition_clips=(0,), text_tokens=27)
    block_mask = layout.to_block_mask(block_size=16)
    assert block_mask.shape[-2:] == (layout.seq_len, layout.seq_len)
    # the block-level picture: every tile pair with an allowed element is listed, nothing else
    dense_blocks = block_mask.to_dense()[0, 0].bool()
    assert torch.equal(dense_blocks, layout.tiles(16).classes != SKIP)


def test_layerflow_presets_have_the_paper_shapes():
    per_clip = cogvideox_clip_tokens(4, 60, 90)
    assert per_clip == 5400
    rgba = layerflow_layout(3, 4, per_clip)
    assert rgba.seq_len == 22_278 and rgba.lengths[:3] == (226, 226, 226) and rgba.is_full
    cond = conditional_layout(2, 4, 100, condition_clips=(0,))
    table = cond.allowed
    assert table[2].tolist() == [True, True, True, False, False, False]  # condition clip: text + itself
    assert table[[0, 1, 3, 4, 5]].all()  # text and noisy clips see everything
    with pytest.raises(ValueError, match="out of range"):
        conditional_layout(2, 4, 100, condition_clips=(4,))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        cogvideox_clip_tokens(4, 61, 90)
