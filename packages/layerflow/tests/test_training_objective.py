"""The masked v-prediction objective: condition clips clean and loss-free, the pipeline's schedule,
per-layer text dropout, task mixing, and per-sample draws independent of how the batch is split."""

from __future__ import annotations

import pytest
import torch

from layerflow.layout import LayerLayout
from layerflow.pipelines.scheduling import make_scheduler
from layerflow.training.objective import (
    STREAM_NOISE,
    ModelBatch,
    Objective,
    masked_v_loss,
    sample_generator,
)

S, D, C, T, H = 4, 8, 4, 2, 3  # tokens per prompt, text width, latent channels, frames per clip, latent size


def make_objective(
    tasks: dict[str, float],
    *,
    dropout: float = 0.0,
    mixing: str = "per_batch",
    layout: LayerLayout | None = None,
) -> Objective:
    return Objective(
        make_scheduler("dpm"),
        layout or LayerLayout.official(),
        tasks,
        task_mixing=mixing,
        text_dropout=dropout,
        tokens_per_prompt=S,
        seed=7,
    )


def make_batch(batch: int = 2, seed: int = 0, clips: int = 4, layers: int = 3) -> ModelBatch:
    generator = torch.Generator().manual_seed(seed)
    return ModelBatch(
        latents=torch.randn(batch, clips * T, C, H, H, generator=generator),
        prompt_embeds=torch.randn(batch, layers * S, D, generator=generator),
        is_static=torch.zeros(batch),
        clip_frames=(T,) * clips,
        sample_ids=[f"s{i}" for i in range(batch)],
    )


@pytest.mark.parametrize(
    ("task", "condition_clips", "prompt_layers"),
    [
        ("generate", [], [0, 1, 2, 3]),
        ("foreground_to_background", [0, 1, 2, 3], [0, 1, 2, 3]),
        ("background_to_foreground", [4], [0, 1, 2, 3]),
        ("decompose", [5], [0, 1, 2]),
    ],
)
def test_two_foreground_layout_drives_loss_mask_and_prompts(task, condition_clips, prompt_layers) -> None:
    """Clips fg0 | a0 | fg1 | a1 | bg | composite; prompts fg0, fg1, bg, composite (hand-listed oracle)."""
    objective = make_objective({task: 1.0}, layout=LayerLayout.with_foregrounds(2))
    batch = make_batch(clips=6, layers=4)
    noised = objective.noise(batch, step=0, micro_step=0, positions=[0, 1])
    expected_mask = torch.ones(6, T)
    expected_mask[condition_clips] = 0.0
    assert torch.equal(noised.loss_mask, expected_mask.flatten().expand(2, -1))
    rows = batch.prompt_embeds.unflatten(1, (4, S))
    assert torch.equal(noised.text, rows[:, prompt_layers].flatten(1, 2))
    with pytest.raises(ValueError, match="the layout has 6 clips"):
        objective.noise(make_batch(), step=0, micro_step=0, positions=[0, 1])


@pytest.mark.parametrize(
    ("task", "condition_clips"),
    [
        ("generate", []),
        ("foreground_to_background", [0, 1]),
        ("background_to_foreground", [2]),
        ("decompose", [3]),
    ],
)
def test_noising_matches_the_ddpm_formula_and_keeps_conditions_clean(
    task: str, condition_clips: list[int]
) -> None:
    objective, batch = make_objective({task: 1.0}), make_batch()
    noised = objective.noise(batch, step=3, micro_step=0, positions=[0, 1])
    alphas = make_scheduler("dpm").alphas_cumprod
    for b in range(2):
        eps = torch.randn(batch.latents.shape[1:], generator=sample_generator(7, 3, 0, b, STREAM_NOISE))
        a = alphas[noised.timesteps[b]]
        x0 = batch.latents[b]
        expected_input = a.sqrt() * x0 + (1 - a).sqrt() * eps
        torch.testing.assert_close(noised.target[b], a.sqrt() * eps - (1 - a).sqrt() * x0)
        for clip in range(4):
            frames = slice(clip * T, (clip + 1) * T)
            if clip in condition_clips:
                assert torch.equal(noised.model_input[b, frames], x0[frames])
                assert noised.loss_mask[b, frames].eq(0).all()
            else:
                torch.testing.assert_close(noised.model_input[b, frames], expected_input[frames])
                assert noised.loss_mask[b, frames].eq(1).all()


def test_condition_latents_get_no_loss() -> None:
    objective, batch = make_objective({"foreground_to_background": 1.0}), make_batch()
    noised = objective.noise(batch, step=0, micro_step=0, positions=[0, 1])
    prediction = torch.randn_like(noised.target, requires_grad=True)
    loss = masked_v_loss(prediction, noised.target, noised.loss_mask)
    loss.backward()
    condition = slice(0, 2 * T)  # foreground + alpha clips
    assert prediction.grad[:, condition].eq(0).all()
    assert prediction.grad[:, 2 * T :].abs().gt(0).all()
    changed = prediction.detach().clone()
    changed[:, condition] += 100.0
    assert masked_v_loss(changed, noised.target, noised.loss_mask) == loss.detach()
    # Oracle: the per-sample MSE over the generated clips only, averaged over the batch.
    generated = ((prediction.detach() - noised.target)[:, 2 * T :] ** 2).flatten(1).mean(1).mean()
    torch.testing.assert_close(loss.detach(), generated)


def test_decompose_drops_the_composite_prompt_and_generate_keeps_all() -> None:
    batch = make_batch()
    text = make_objective({"decompose": 1.0}).noise(batch, 0, 0, [0, 1]).text
    assert torch.equal(text, batch.prompt_embeds[:, : 2 * S])
    text = make_objective({"generate": 1.0}).noise(batch, 0, 0, [0, 1]).text
    assert torch.equal(text, batch.prompt_embeds)


def test_text_dropout_zeroes_whole_layer_prompts_at_the_configured_rate() -> None:
    batch = make_batch(batch=256)
    text = make_objective({"generate": 1.0}, dropout=0.3).noise(batch, 0, 0, list(range(256))).text
    rows = text.unflatten(1, (3, S))
    original = batch.prompt_embeds.unflatten(1, (3, S))
    dropped = rows.abs().sum(dim=(2, 3)).eq(0)
    assert torch.equal(rows[~dropped], original[~dropped])
    assert 0.22 < dropped.float().mean().item() < 0.38  # 768 Bernoulli(0.3) draws


def test_task_mixing_per_batch_and_per_sample() -> None:
    tasks = {"generate": 1.0, "foreground_to_background": 1.0, "background_to_foreground": 1.0}
    per_batch = make_objective(tasks)
    drawn = [per_batch.draw_tasks(step, 0, range(8)) for step in range(30)]
    assert all(len(set(d)) == 1 for d in drawn)
    assert {d[0] for d in drawn} == set(tasks)
    per_sample = make_objective(tasks, mixing="per_sample")
    mixed = per_sample.draw_tasks(0, 0, range(64))
    assert set(mixed) == set(tasks)
    noised = per_sample.noise(make_batch(batch=64), 0, 0, list(range(64)))
    for b, task in enumerate(noised.tasks):
        expected = {"generate": 0, "foreground_to_background": 2 * T, "background_to_foreground": T}[task]
        assert int((noised.loss_mask[b] == 0).sum()) == expected


def test_draws_do_not_depend_on_how_the_global_batch_is_split() -> None:
    """What a 2-process run draws on its two halves is what one process draws on the whole batch."""
    objective, batch = make_objective({"generate": 1.0, "decompose": 1.0}, dropout=0.5), make_batch(batch=4)
    whole = objective.noise(batch, 5, 1, [0, 1, 2, 3])
    halves = [
        objective.noise(
            ModelBatch(
                batch.latents[i : i + 2],
                batch.prompt_embeds[i : i + 2],
                batch.is_static[i : i + 2],
                (T,) * 4,
                [],
            ),
            5,
            1,
            [i, i + 1],
        )
        for i in (0, 2)
    ]
    for name in ("model_input", "text", "timesteps", "target"):
        assert torch.equal(getattr(whole, name), torch.cat([getattr(h, name) for h in halves]))
