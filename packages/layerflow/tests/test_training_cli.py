"""``python -m layerflow.training``: the stage chain 1 -> 2 -> 3 on the tiny default, its exports, and the
error when a previous stage is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import multi_lora
from layerflow.models.adapters import CONTENT, MOTION
from layerflow.pipelines import LayerFlowPipeline
from layerflow.training import main
from layerflow.training.testing import reset_accelerate_state

SMALL = [
    "--max-steps",
    "2",
    "--no-progress",
    "--set",
    "data.height=16",
    "--set",
    "data.width=16",
    "--set",
    "run.tracker='none'",
]


def run_stage(root: Path, stage: int, *extra: str) -> int:
    reset_accelerate_state()
    return main(["--stage", str(stage), "--output-root", str(root), *SMALL, *extra])


def test_stage_without_previous_output_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_stage(tmp_path, 2) == 2
    message = capsys.readouterr().err
    assert "python -m layerflow.training --stage 1" in message and "--from-base" in message
    assert not (tmp_path / "stage2").exists()
    assert run_stage(tmp_path, 3, "--from-base", "--max-steps", "1") == 0
    pipe = LayerFlowPipeline.from_pretrained(tmp_path / "stage3" / "final" / "pipeline")
    assert multi_lora.list_adapters(pipe.transformer) == [CONTENT]  # no stage 2: no motion LoRA


def test_bad_override_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_stage(tmp_path, 1, "--set", "optim.batch_size=0") == 2
    assert "optim.batch_size must be in [1, 4096], got 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_stage(tmp_path, 1, "--set", "run.mixed_precision='fp16'") == 2
        assert "fp16' needs a CUDA device" in capsys.readouterr().err


def tiny_forward(transformer: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 8, 4, 4, 4, generator=generator)
    text = torch.randn(
        1, 3 * transformer.config.max_text_seq_length, transformer.config.text_embed_dim, generator=generator
    )
    with torch.no_grad():
        return transformer(hidden, text, torch.tensor([400]), num_clips=4, return_dict=False)[0]


def test_three_stage_chain_exports_loadable_pipelines(tmp_path: Path) -> None:
    for stage in (1, 2, 3):
        assert run_stage(tmp_path, stage) == 0
    final = {stage: tmp_path / f"stage{stage}" / "final" / "pipeline" for stage in (1, 2, 3)}
    pipes = {stage: LayerFlowPipeline.from_pretrained(final[stage]) for stage in (1, 2, 3)}
    assert multi_lora.list_adapters(pipes[1].transformer) == []
    assert multi_lora.list_adapters(pipes[2].transformer) == [MOTION]
    assert sorted(multi_lora.list_adapters(pipes[3].transformer)) == [CONTENT, MOTION]

    # Stage 1 moved its trained blocks; stages 2 and 3 left every base weight as stage 1 exported it.
    base1 = dict(pipes[1].transformer.named_parameters())
    for stage in (2, 3):
        with multi_lora_bare(pipes[stage].transformer) as base:
            assert base.keys() == base1.keys()
            assert all(torch.equal(base[k], base1[k]) for k in base1)
    trained1 = load_file(str(tmp_path / "stage1" / "final" / "trained.safetensors"))
    assert trained1.keys() == base1.keys()  # tiny.toml: the random base trains whole (stage1_trains = "all")
    for key, value in trained1.items():
        assert torch.equal(base1[key], value)

    # Oracle for the stage-3 export at inference gates (motion 0, content 1): stage-2 base weights
    # plus (alpha / r) * B @ A of the trained content LoRA, by hand.
    trained3 = load_file(str(tmp_path / "stage3" / "final" / "trained.safetensors"))
    assert trained3 and all(f".{CONTENT}." in k for k in trained3)
    oracle = LayerFlowPipeline.from_pretrained(final[1]).transformer
    config = multi_lora.get_adapter_config(pipes[3].transformer, CONTENT)
    with torch.no_grad():
        for key in trained3:
            if ".lora_A." not in key:
                continue
            path = key.split(".lora_A.")[0]
            lora_a, lora_b = trained3[key], trained3[key.replace(".lora_A.", ".lora_B.")]
            oracle.get_submodule(path).weight += (config.alpha / config.rank) * lora_b @ lora_a
    assert any(t.abs().sum() > 0 for k, t in trained3.items() if ".lora_B." in k)
    torch.testing.assert_close(tiny_forward(pipes[3].transformer), tiny_forward(oracle), rtol=1e-5, atol=1e-6)

    # The exported pipeline runs inference.
    output = pipes[3](
        {"foreground": "a red circle", "background": "blue stripes", "composite": "a red circle over blue stripes"},
        num_frames=8, height=16, width=16, num_inference_steps=2, output_type="latent",
    )  # fmt: skip
    assert torch.isfinite(output.latents).all()


class multi_lora_bare:
    """The base parameters of a transformer with adapters, under their stock names."""

    def __init__(self, transformer: torch.nn.Module):
        from layerflow.models.adapters import bare_linears

        self.context = bare_linears(transformer)
        self.transformer = transformer

    def __enter__(self) -> dict[str, torch.Tensor]:
        self.context.__enter__()
        return dict(self.transformer.named_parameters())

    def __exit__(self, *args: object) -> None:
        self.context.__exit__(*args)


def test_what_a_stage_adds_starts_from_the_run_seed_not_the_process_rng(tmp_path: Path) -> None:
    """A stage's new LoRA factors are drawn from ``run.seed``: two runs of one config, started with the
    process RNG in different states, train the same weights (the demo's stage 2/3 LoRAs differed run to
    run before)."""
    trained = []
    for process_seed in (1, 2):
        torch.manual_seed(process_seed)
        root = tmp_path / str(process_seed)
        assert run_stage(root, 3, "--from-base", "--max-steps", "1") == 0
        trained.append(load_file(str(root / "stage3" / "final" / "trained.safetensors")))
    assert trained[0].keys() == trained[1].keys() and any("lora" in key for key in trained[0])
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])
