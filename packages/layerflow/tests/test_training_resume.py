"""Kill-and-resume reproduces the uninterrupted run exactly; a killed checkpoint write leaves nothing loadable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from layerflow.training import checkpointing as ckpt
from layerflow.training.testing import reset_accelerate_state, tiny_test_config, train_tiny
from layerflow.training.trainer import LayerFlowTrainer


class Killed(RuntimeError):
    pass


run = train_tiny  # a tiny stage-1 run into root/name, cache shared in root/cache


def kill_after(step: int):
    def callback(done: int, loss: float) -> None:
        if done == step:
            raise Killed(f"killed after step {step}")

    return callback


OPTIONS = {
    "run": {"max_steps": 6, "checkpoint_every": 2, "ema_decay": 0.9},
    "optim": {"gradient_accumulation_steps": 2, "lr_warmup_steps": 2},
}


def test_kill_and_resume_reproduces_the_uninterrupted_loss_curve(tmp_path: Path) -> None:
    full = run(tmp_path, "full", OPTIONS)
    with pytest.raises(Killed):
        run(tmp_path, "killed", OPTIONS, on_step_end=kill_after(5))  # checkpoint 4 written, step 5 lost
    assert ckpt.latest_checkpoint(tmp_path / "killed").name == "checkpoint-4"
    state = ckpt.read_checkpoint(tmp_path / "killed" / "checkpoints" / "checkpoint-4", 0)[0].state
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 2, 0)  # 8 samples, 2 x 2 per step
    resumed = run(tmp_path, "killed", OPTIONS, resume=True)
    assert len(full.losses) == 6
    assert resumed.losses == full.losses  # bit-exact on CPU
    assert full.losses[:4] != full.losses[2:]  # the curve is not flat: the comparison can fail
    for name in ("trained.safetensors",):
        a = load_file(str(tmp_path / "full" / "final" / name))
        b = load_file(str(tmp_path / "killed" / "final" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_a_killed_checkpoint_write_leaves_no_loadable_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"run": {"max_steps": 4, "checkpoint_every": 2}}
    reference = run(tmp_path, "reference", options)
    original = ckpt._write_json
    seen: list[Path] = []

    def dies_writing_the_second_state(path: Path, data: Any) -> None:
        if data.get("step") == 4:
            seen.append(path.parent)
            assert any((path.parent / ckpt.TENSORS).glob("*.safetensors"))  # tensors written, state.json next
            raise Killed("killed while writing checkpoint 4")
        original(path, data)

    monkeypatch.setattr(ckpt, "_write_json", dies_writing_the_second_state)
    with pytest.raises(Killed):
        run(tmp_path, "run", options)
    monkeypatch.setattr(ckpt, "_write_json", original)
    output = tmp_path / "run"
    assert seen and seen[0].name.startswith(".") and not seen[0].exists()
    assert [p.name for p in (output / "checkpoints").iterdir()] == ["checkpoint-2"]
    # A folder without state.json (e.g. copied by hand while being written) is never picked up.
    (output / "checkpoints" / "checkpoint-9").mkdir()
    assert ckpt.latest_checkpoint(output).name == "checkpoint-2"
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.read_checkpoint(output / "checkpoints" / "checkpoint-9", 0)
    (output / "checkpoints" / "checkpoint-9").rmdir()
    resumed = run(tmp_path, "run", options, resume=True)
    assert resumed.losses == reference.losses
    assert [p.name for p in ckpt.complete_checkpoints(output)] == ["checkpoint-2", "checkpoint-4"]


def test_resume_refuses_a_checkpoint_of_another_stage(tmp_path: Path) -> None:
    run(tmp_path, "one", {"run": {"max_steps": 2, "checkpoint_every": 2}})
    reset_accelerate_state()
    settings = {
        "run": {"output_dir": str(tmp_path / "two")},
        "data": {"cache_dir": str(tmp_path / "cache")},
        "model": {"init_from": "base"},
    }
    trainer = LayerFlowTrainer(
        tiny_test_config(tmp_path, 2, settings), resume=tmp_path / "one" / "checkpoints" / "checkpoint-2"
    )
    with pytest.raises(ckpt.CheckpointError, match="stage-1 checkpoint"):
        trainer.train()
