"""Every matting, recomposition and flicker metric against hand-computed values on small arrays."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch

from layerflow.metrics import (
    alpha_iou,
    connectivity_error,
    dtssd,
    gradient_error,
    largest_component,
    mean_absolute_error,
    mse,
    recomposition_error,
    sad,
    temporal_flicker,
)
from layerflow.metrics.components import label_components
from layerflow.metrics.matting import gaussian_gradient_kernels, gradient_magnitude

T = torch.tensor
ALPHA_METRICS = [sad, mse, gradient_error, connectivity_error, dtssd]


def _random_alpha(seed: int, shape=(3, 1, 12, 14)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g), 3, 1, 1)
    return ((smooth - 0.3) * 2.5).clamp(0, 1)


@pytest.mark.parametrize("metric", ALPHA_METRICS)
def test_identical_alphas_give_zero(metric):
    alpha = _random_alpha(0)
    assert metric(alpha, alpha.clone()) == 0.0


def test_identical_alphas_give_iou_one_also_when_empty():
    alpha = _random_alpha(1)
    assert alpha_iou(alpha, alpha.clone()) == 1.0
    assert alpha_iou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)) == 1.0


def test_sad_and_mse_by_hand():
    pred = T([[0.0, 0.5], [1.0, 1.0]])
    target = T([[0.0, 0.0], [1.0, 0.0]])
    assert sad(pred, target) == pytest.approx(1.5 / 1000)
    assert mse(pred, target) == pytest.approx((0.25 + 1.0) / 4)
    region = T([[True, True], [False, False]])
    assert sad(pred, target, region) == pytest.approx(0.5 / 1000)
    assert mse(pred, target, region) == pytest.approx(0.25 / 2)


def test_video_metrics_average_over_frames():
    pred = torch.stack([T([[1.0, 0.0]]), T([[0.0, 0.0]])])  # [T=2, H=1, W=2]
    target = torch.zeros(2, 1, 2)
    assert sad(pred, target) == pytest.approx((1.0 + 0.0) / 2 / 1000)
    assert mse(pred, target) == pytest.approx((0.5 + 0.0) / 2)


def test_iou_by_hand_at_threshold_one_half():
    pred = T([[0.6, 0.4], [0.9, 0.0]])
    target = T([[1.0, 1.0], [0.0, 0.0]])
    assert alpha_iou(pred, target) == pytest.approx(1 / 3)
    assert alpha_iou(T([[0.5]]), T([[1.0]])) == 0.0  # 0.5 is not above the threshold


def test_dtssd_by_hand():
    pred = torch.stack([T([[0.0, 0.0]]), T([[1.0, 0.0]])])
    target = torch.stack([T([[0.0, 0.0]]), T([[0.5, 0.5]])])
    # (dp - dg) = [0.5, -0.5] -> sqrt(mean(0.25)) = 0.5 -> x100
    assert dtssd(pred, target) == pytest.approx(50.0)
    # A constant offset does not change temporal coherence.
    assert dtssd(target + 0.2, target) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        dtssd(T([[0.0]]), T([[0.0]]))


def test_connectivity_error_by_hand():
    # A ground-truth blob disconnected from the main one is lost by the prediction.
    assert connectivity_error(T([[1.0, 1.0, 0.0, 0.0]]), T([[1.0, 1.0, 0.0, 1.0]])) == pytest.approx(1 / 1000)
    # l = [1, 0.6, 0.2]: pred d = [0, .05, .05] -> phi 1; target d = [0, .4, .8] -> phi [1, .6, .2].
    pred = torch.tensor([[1.0, 0.65, 0.25]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    assert connectivity_error(pred, target) == pytest.approx(1.2 / 1000)


def _matlab_gaussgradient_magnitude(image: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """Literal transcription of the DIM benchmark's gaussgradient (loops, replicate, 'conv')."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    size = 2 * half + 1
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            u = (i - half, j - half)
            g = math.exp(-(u[0] ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            gj = math.exp(-(u[1] ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            hx[i, j] = g * (-u[1] * gj / sigma**2)
    hx = hx / math.sqrt((hx**2).sum())
    hy = hx.T
    padded = np.pad(image, half, mode="edge")
    h, w = image.shape
    gx, gy = np.zeros_like(image), np.zeros_like(image)
    for y in range(h):
        for x in range(w):
            window = padded[y : y + size, x : x + size][::-1, ::-1]  # convolution flips the kernel
            gx[y, x] = (window * hx).sum()
            gy[y, x] = (window * hy).sum()
    return np.sqrt(gx**2 + gy**2)


def test_gradient_kernels_and_magnitude_match_the_reference_loops():
    hx, hy = gaussian_gradient_kernels(1.4)
    assert hx.shape == (9, 9) and torch.allclose(hy, hx.T) and (hx**2).sum() == pytest.approx(1.0)
    image = _random_alpha(2, (1, 1, 11, 13))[0, 0].double()
    ours = gradient_magnitude(image.unsqueeze(0))[0].numpy()
    assert np.allclose(ours, _matlab_gaussgradient_magnitude(image.numpy()), atol=1e-12)


def test_gradient_error_by_hand_from_the_reference_magnitudes():
    pred, target = (
        _random_alpha(3, (1, 1, 10, 10))[0, 0].double(),
        _random_alpha(4, (1, 1, 10, 10))[0, 0].double(),
    )

    def normalise(x):
        return (x - x.min()) / (x.max() - x.min())  # MATLAB mat2gray

    expected = (
        (
            _matlab_gaussgradient_magnitude(normalise(pred).numpy())
            - _matlab_gaussgradient_magnitude(normalise(target).numpy())
        )
        ** 2
    ).sum() / 1000
    assert gradient_error(pred, target) == pytest.approx(expected, rel=1e-9)
    assert gradient_error(pred, target) > 0


def _bfs_labels(mask: torch.Tensor) -> torch.Tensor:
    h, w = mask.shape
    labels = torch.full((h, w), -1, dtype=torch.long)
    for i in range(h):
        for j in range(w):
            if mask[i, j] and labels[i, j] < 0:
                labels[i, j] = i * w + j
                queue = deque([(i, j)])
                while queue:
                    a, b = queue.popleft()
                    for x, y in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= x < h and 0 <= y < w and mask[x, y] and labels[x, y] < 0:
                            labels[x, y] = i * w + j
                            queue.append((x, y))
    return labels


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_component_labels_match_breadth_first_search(density):
    mask = torch.rand(4, 13, 17, generator=torch.Generator().manual_seed(5)) < density
    labels = label_components(mask)
    for k in range(4):
        ours = torch.where(mask[k], labels[k] - k * 13 * 17, -1)
        assert torch.equal(ours, _bfs_labels(mask[k]))


def test_largest_component_ties_go_to_the_first_in_raster_order_and_snakes_connect():
    mask = T([[1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool().unsqueeze(0)
    assert torch.equal(
        largest_component(mask)[0], T([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()
    )
    tie = T([[1, 0, 1]]).bool().unsqueeze(0)
    assert torch.equal(largest_component(tie)[0], T([[1, 0, 0]]).bool())
    assert not largest_component(torch.zeros(1, 3, 3, dtype=torch.bool)).any()
    snake = torch.zeros(1, 15, 15, dtype=torch.bool)
    snake[0, ::2] = True
    snake[0, 1::4, -1] = True
    snake[0, 3::4, 0] = True
    assert torch.equal(largest_component(snake), snake)


def test_alpha_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        sad(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\[T, 1, H, W\]"):
        mse(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


def test_recomposition_error_by_hand():
    fg = torch.ones(1, 3, 1, 2)
    bg = torch.zeros(1, 3, 1, 2)
    alpha = T([[[[0.25, 1.0]]]])
    exact = alpha * fg + (1 - alpha) * bg
    assert recomposition_error(exact, fg, alpha, bg) == 0.0
    off = exact.clone()
    off[0, :, 0, 0] = 0.75  # 0.5 too bright in one pixel of two, all channels
    assert recomposition_error(off, fg, alpha, bg) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="alpha"):
        recomposition_error(exact, fg, fg, bg)


def test_temporal_flicker_and_mae_by_hand():
    video = T([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]).view(3, 1, 1, 2)
    assert temporal_flicker(video) == pytest.approx(0.5)
    assert temporal_flicker(video[:1].expand(4, 1, 1, 2)) == 0.0
    assert mean_absolute_error(video, video) == 0.0
    assert mean_absolute_error(video, torch.zeros_like(video)) == pytest.approx(3 / 6)


def _matlab_connectivity_error(pred: np.ndarray, target: np.ndarray, step: float = 0.1) -> float:
    """Literal transcription of the DIM benchmark's compute_connectivity_error (whole frame)."""
    thresholds = [i * step for i in range(round(1 / step) + 1)]
    level = -np.ones_like(pred)
    for ii in range(1, len(thresholds)):
        both = torch.from_numpy((pred >= thresholds[ii]) & (target >= thresholds[ii]))
        labels = _bfs_labels(both)
        omega = np.zeros(pred.shape, dtype=bool)
        if both.any():
            ids, counts = np.unique(labels[both].numpy(), return_counts=True)
            omega = labels.numpy() == ids[np.argmax(counts)]
        level[(level == -1) & ~omega] = thresholds[ii - 1]
    level[level == -1] = 1
    pred_d, target_d = pred - level, target - level
    pred_phi = 1 - pred_d * (pred_d >= 0.15)
    target_phi = 1 - target_d * (target_d >= 0.15)
    return float(np.abs(pred_phi - target_phi).sum() / 1000)


@pytest.mark.parametrize("seed", range(3))
def test_connectivity_error_matches_the_reference_transcription(seed):
    pred = _random_alpha(10 + seed, (1, 1, 12, 15))[0, 0].double()
    target = _random_alpha(20 + seed, (1, 1, 12, 15))[0, 0].double()
    expected = _matlab_connectivity_error(pred.numpy(), target.numpy())
    assert expected > 0
    assert connectivity_error(pred, target) == pytest.approx(expected, rel=1e-12)
