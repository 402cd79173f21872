"""``torch.compile(fullgraph=True)`` captures the LayerFlow transformer on the SDPA path whole.

The backend choice of ``layer_attention`` is made once at trace time (``assume_constant_result``)
and the layout travels as an ordinary Python object in ``attention_kwargs``, so there is no graph
break: ``fullgraph=True`` would raise on one. ``aot_eager`` runs the captured forward and the
AOTAutograd backward without inductor's C++ build, which keeps the test within seconds of tracing.
"""

from __future__ import annotations

import pytest
import torch

from layer_attention import SegmentLayout
from layerflow.testing import TINY_TEXT_LENGTH, build_tiny_transformer, single_thread


@pytest.mark.slow
def test_transformer_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    model = build_tiny_transformer(num_layers=1)  # attention_backend "auto": SDPA on CPU
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, 2, 4, 4, 4, generator=generator)
    text = torch.randn(1, TINY_TEXT_LENGTH, 16, generator=generator)
    timestep = torch.tensor([500])
    # conditional-style layout: the grouped SDPA path (one unmasked call per query group)
    kwargs = {"layout": SegmentLayout.cached([TINY_TEXT_LENGTH, 4, 4], [[1, 1, 1], [1, 1, 0], [1, 0, 1]])}
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        out = fn(video, text, timestep, num_clips=2, attention_kwargs=kwargs, return_dict=False)[0]
        return out, torch.autograd.grad(out.square().sum(), params)

    with single_thread():
        eager_out, eager_grads = run(model)
        compiled_out, compiled_grads = run(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled_out, eager_out)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    torch._dynamo.reset()
