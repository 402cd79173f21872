"""A 2-process gloo (DDP on CPU) run: identical weights on both ranks, and the single-process run with
the same global batch reproduced within float tolerance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from layerflow.training.export import load_base
from layerflow.training.testing import free_port, join_cpu_group, reset_accelerate_state, tiny_test_config
from layerflow.training.trainer import LayerFlowTrainer

STEPS = 4


def settings(root: Path, name: str, batch_size: int) -> dict[str, Any]:
    return {
        "run": {"output_dir": str(root / name), "max_steps": STEPS, "checkpoint_every": STEPS},
        "data": {"cache_dir": str(root / "cache")},
        "optim": {"batch_size": batch_size},
    }


def worker(rank: int, world_size: int, port: int, root: str) -> None:
    join_cpu_group(rank, world_size, port)
    reset_accelerate_state()
    trainer = LayerFlowTrainer(tiny_test_config(root, 1, settings(Path(root), "ddp", batch_size=2)))
    result = trainer.train()
    assert trainer.accelerator.num_processes == world_size, "the run did not go distributed"
    out = Path(root) / "ranks"
    out.mkdir(exist_ok=True)
    save_file(
        {k: v.detach().contiguous() for k, v in trainer.trained.items()}, str(out / f"rank{rank}.safetensors")
    )
    (out / f"rank{rank}.json").write_text(json.dumps(result.losses))


def test_two_process_gloo_run_matches_the_single_process_run(tmp_path: Path) -> None:
    reset_accelerate_state()
    single = LayerFlowTrainer(tiny_test_config(tmp_path, 1, settings(tmp_path, "single", batch_size=4)))
    single_result = single.train()
    reference = {k: v.detach().clone() for k, v in single.trained.items()}
    reset_accelerate_state()

    mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="fork")

    ranks = [load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == reference.keys()
    for key, expected in reference.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between ranks"
        torch.testing.assert_close(ranks[0][key], expected, rtol=1e-4, atol=1e-5, msg=key)
    initial = dict(load_base(single.config).transformer.named_parameters())
    moved = [k for k in reference if not torch.allclose(initial[k], reference[k], atol=1e-5)]
    assert len(moved) > len(reference) // 2  # the runs trained: matching them is not trivial
    losses = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert losses[0] == losses[1]  # the logged loss is the all-reduced global mean
    torch.testing.assert_close(
        torch.tensor(losses[0]), torch.tensor(single_result.losses), rtol=1e-4, atol=1e-5
    )
