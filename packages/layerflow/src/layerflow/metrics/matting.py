"""Alpha-matte quality against ground truth, with the standard matting definitions.

Inputs are alpha videos ``[T, 1, H, W]`` (or ``[T, H, W]`` / ``[H, W]``) in [0, 1]. Image metrics are
computed per frame and averaged over frames. ``region`` (bool, same shape) is the evaluated area,
the "unknown" region of a trimap in image-matting benchmarks; by default every pixel counts, as in
video-matting benchmarks. Definitions and scales follow the Deep Image Matting (DIM) benchmark
code (Xu et al. 2017, after Rhemann et al. 2009), with alpha on the 0-1 scale:

* ``sad``: ``sum_region |p - g| / 1000``.
* ``mse``: ``sum_region (p - g)^2 / |region|`` (no extra scale).
* ``gradient_error``: both mattes min-max normalised per frame (MATLAB ``mat2gray``), filtered
  with first-order Gaussian-derivative kernels (sigma 1.4, kernel half-size
  ``ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01)))`` = 4, L2-normalised, replicate padding);
  ``sum_region (|grad p| - |grad g|)^2 / 1000``.
* ``connectivity_error``: thresholds ``0.1, 0.2, ..., 1.0``; for each, the largest 4-connected
  component of ``p >= th & g >= th``; ``l`` is the last threshold before a pixel leaves that
  component (1 if it never does); ``phi(x) = 1 - d * [d >= 0.15]`` with ``d = x - l``;
  ``sum_region |phi(p) - phi(g)| / 1000``.
* ``alpha_iou``: ``|P & G| / |P | G|`` for ``P = p > 0.5``, ``G = g > 0.5`` per frame (1 when both
  are empty), averaged over frames.
* ``dtssd``: temporal coherence (Erofeev et al. 2015, in the video-matting convention):
  ``mean_t sqrt(mean_region ((p_t - p_{t-1}) - (g_t - g_{t-1}))^2) * 100`` over ``t = 1..T-1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .components import largest_component

IOU_THRESHOLD = 0.5
GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_THETA = 0.15
DIM_SCALE = 1000.0  # SAD, gradient and connectivity errors are reported in thousands
DTSSD_SCALE = 100.0


def _as_frames(name: str, x: Tensor) -> Tensor:
    """``[H, W]``, ``[T, H, W]`` or ``[T, 1, H, W]`` -> float64 ``[T, H, W]``."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(
            f"{name}: expected an alpha of shape [T, 1, H, W], [T, H, W] or [H, W], got {tuple(x.shape)}"
        )
    return x.to(torch.float64)


def _prepare(pred: Tensor, target: Tensor, region: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    p, g = _as_frames("pred", pred), _as_frames("target", target)
    if p.shape != g.shape:
        raise ValueError(f"pred and target alpha shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    if region is None:
        r = torch.ones_like(p, dtype=torch.bool)
    else:
        r = _as_frames("region", region).bool()
        if r.shape != p.shape:
            raise ValueError(f"region shape {tuple(r.shape)} does not match the alpha shape {tuple(p.shape)}")
    return p, g, r


def sad(pred: Tensor, target: Tensor, region: Tensor | None = None) -> float:
    """Sum of absolute differences per frame / 1000, averaged over frames."""
    p, g, r = _prepare(pred, target, region)
    return float((((p - g).abs() * r).sum(dim=(1, 2)) / DIM_SCALE).mean())


def mse(pred: Tensor, target: Tensor, region: Tensor | None = None) -> float:
    """Mean squared error over the region per frame, averaged over frames (0 for an empty region)."""
    p, g, r = _prepare(pred, target, region)
    count = r.sum(dim=(1, 2)).clamp(min=1)
    return float((((p - g) ** 2 * r).sum(dim=(1, 2)) / count).mean())


def _gaussian_and_derivative(sigma: float) -> tuple[Tensor, Tensor]:
    """1-D Gaussian and its derivative on the DIM kernel support, and the 2-D kernel's L2 norm folded in."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    u = torch.arange(-half, half + 1, dtype=torch.float64)
    gauss = torch.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -u * gauss / sigma**2
    norm = torch.sqrt((gauss**2).sum() * (dgauss**2).sum())  # = ||outer(gauss, dgauss)||_2
    return gauss, dgauss / norm


def gaussian_gradient_kernels(sigma: float = GRADIENT_SIGMA) -> tuple[Tensor, Tensor]:
    """The DIM benchmark's ``gaussgradient`` kernels ``(hx, hy)``: Gaussian times its derivative."""
    gauss, dgauss = _gaussian_and_derivative(sigma)
    hx = gauss.view(-1, 1) * dgauss.view(1, -1)  # rows: Gaussian in y; columns: derivative in x
    return hx, hx.T.contiguous()


def _minmax_normalise(x: Tensor) -> Tensor:
    """MATLAB ``mat2gray`` per frame; a constant frame (no gradient either way) maps to 0."""
    low = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))


def gradient_magnitude(alpha: Tensor, sigma: float = GRADIENT_SIGMA) -> Tensor:
    """``|grad alpha|`` of ``[T, H, W]`` frames with the DIM Gaussian-derivative filters.

    The 2-D kernels are outer products, so each is applied as two 1-D passes; MATLAB's
    ``imfilter(..., 'replicate', 'conv')`` flips the kernel, ``conv2d`` correlates, hence the flips.
    """
    gauss, dgauss = _gaussian_and_derivative(sigma)
    half = gauss.numel() // 2
    padded = F.pad(alpha.unsqueeze(1), (half, half, half, half), mode="replicate")
    g_rows = gauss.flip(0).view(1, 1, -1, 1).to(alpha.dtype)
    g_cols = gauss.flip(0).view(1, 1, 1, -1).to(alpha.dtype)
    d_rows = dgauss.flip(0).view(1, 1, -1, 1).to(alpha.dtype)
    d_cols = dgauss.flip(0).view(1, 1, 1, -1).to(alpha.dtype)
    gx = F.conv2d(F.conv2d(padded, g_rows), d_cols)[:, 0]
    gy = F.conv2d(F.conv2d(padded, d_rows), g_cols)[:, 0]
    return torch.sqrt(gx**2 + gy**2)


def gradient_error(pred: Tensor, target: Tensor, region: Tensor | None = None) -> float:
    """DIM gradient error per frame / 1000, averaged over frames."""
    p, g, r = _prepare(pred, target, region)
    error = (gradient_magnitude(_minmax_normalise(p)) - gradient_magnitude(_minmax_normalise(g))) ** 2
    return float(((error * r).sum(dim=(1, 2)) / DIM_SCALE).mean())


def _connectivity_levels(p: Tensor, g: Tensor) -> Tensor:
    """Per pixel of one frame ``[H, W]``: the last threshold before it leaves the largest component."""
    steps = round(1.0 / CONNECTIVITY_STEP)
    thresholds = torch.arange(steps + 1, dtype=torch.float64) * CONNECTIVITY_STEP
    level = torch.zeros_like(p)  # pixels outside every component leave at the first threshold
    rows, cols = torch.nonzero((p >= thresholds[1]) & (g >= thresholds[1]), as_tuple=True)
    if rows.numel() == 0:
        return level
    # Components at higher thresholds are subsets of the first one: label only its bounding box.
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    pc, gc = p[box], g[box]
    above = thresholds[1:].view(-1, 1, 1)
    omega = largest_component((pc >= above) & (gc >= above))  # [steps, h, w]
    # l = thresholds[i - 1] for the first threshold index i at which the pixel is outside omega.
    outside = ~omega
    first_out = outside.to(torch.uint8).argmax(dim=0)
    level[box] = torch.where(outside.any(dim=0), thresholds[first_out], torch.ones_like(pc))
    return level


def connectivity_error(pred: Tensor, target: Tensor, region: Tensor | None = None) -> float:
    """DIM connectivity error per frame / 1000, averaged over frames."""
    p, g, r = _prepare(pred, target, region)
    # One frame at a time: component labelling holds several int64 maps per threshold.
    level = torch.stack([_connectivity_levels(p[t], g[t]) for t in range(p.shape[0])])
    pred_d, target_d = p - level, g - level
    pred_phi = 1 - pred_d * (pred_d >= CONNECTIVITY_THETA)
    target_phi = 1 - target_d * (target_d >= CONNECTIVITY_THETA)
    return float((((pred_phi - target_phi).abs() * r).sum(dim=(1, 2)) / DIM_SCALE).mean())


def alpha_iou(
    pred: Tensor, target: Tensor, region: Tensor | None = None, threshold: float = IOU_THRESHOLD
) -> float:
    """Intersection over union of ``alpha > threshold`` per frame, averaged (1 if both are empty)."""
    p, g, r = _prepare(pred, target, region)
    pb, gb = (p > threshold) & r, (g > threshold) & r
    inter = (pb & gb).sum(dim=(1, 2)).double()
    union = (pb | gb).sum(dim=(1, 2)).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean())


def dtssd(pred: Tensor, target: Tensor, region: Tensor | None = None) -> float:
    """Temporal coherence error (x100) of an alpha video; needs at least two frames."""
    p, g, r = _prepare(pred, target, region)
    if p.shape[0] < 2:
        raise ValueError(f"dtSSD needs at least 2 frames, got {p.shape[0]}")
    diff = (p[1:] - p[:-1]) - (g[1:] - g[:-1])
    region = r[1:] & r[:-1]
    count = region.sum(dim=(1, 2)).clamp(min=1)
    per_frame = torch.sqrt((diff**2 * region).sum(dim=(1, 2)) / count)
    return float(per_frame.mean() * DTSSD_SCALE)
