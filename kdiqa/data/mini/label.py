"""The mini dataset's label: a pseudo-MOS from a three-scale MS-SSIM against the sample's own clean crop.

``q = 1 − sqrt(1 − MS-SSIM(distorted, reference))``, higher is better, in [0, 1], where the reference
is the clean crop itself, both as saved (uint8). MS-SSIM is the three-scale version on RGB in 0–255:
per channel, 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, reflect padding, 2×2 average
pooling between scales, negative terms clipped to 0, and the first three of Wang et al.'s scale
weights renormalised (0.0448, 0.2856, 0.3001)/0.6305 — the same computation as torchmetrics'
``multiscale_structural_similarity_index_measure(data_range=255, betas=<those three>)`` (computed
here in float32 on centred values, within 1e-5 of it), whose size check refuses crops under 44 px
although three scales need only 24. The square root spreads the labels: MS-SSIM crowds near 1 for
all but strong distortions. The result is clamped to [0, 1] and written with 6 decimals; a distorted
crop identical to its reference (and every clean one) gets 1.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdiqa.errors import DataError

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001)
LABEL_BATCH = 32  # labels are computed in batches this small: they stay in cache (~2x faster), same numbers
LABEL_DEFINITION = (
    "q = 1 - sqrt(1 - MS-SSIM(distorted, own clean crop)), clamped to [0, 1]; MS-SSIM with 3 scales "
    "on RGB 0-255 (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, reflect padding, negative terms "
    "clipped to 0, betas (0.0448, 0.2856, 0.3001) renormalised), as torchmetrics computes it"
)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


@functools.cache
def _blur_matrix(n: int) -> torch.Tensor:
    """(n, n) matrix of "reflect-pad by 5, then 11-tap Gaussian": a blur becomes two matrix products.

    On small images one GEMM is several times faster than a grouped convolution on CPU.
    """
    g = _gaussian_1d()
    pad = (len(g) - 1) // 2
    if n <= pad:
        raise DataError(f"MS-SSIM: a {n}px scale is too small for an 11-tap window")
    m = np.zeros((n, n))
    for i in range(n):
        for k, gk in enumerate(g):
            p = i + k - pad
            p = -p if p < 0 else (2 * (n - 1) - p if p >= n else p)
            m[i, p] += gk
    return torch.from_numpy(m).to(torch.float32)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of the last two (square) dims with reflect padding, output the same size."""
    m = _blur_matrix(x.shape[-1])
    return torch.matmul(torch.matmul(m, x), m.T)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, betas: Sequence[float] = MS_SSIM_BETAS) -> torch.Tensor:
    """Batched multi-scale SSIM of square (B, C, H, H) images in 0–255, one value per image (float64).

    Follows torchmetrics' computation (reflect-padded Gaussian statistics; the contrast-structure
    term averaged over the unpadded interior, the full SSIM term over the whole image at the
    coarsest scale; ReLU on each term); ``betas`` are renormalised to sum to 1. Computed in float32
    (4x faster than float64 here) on values centred at 128 so the variances keep their precision;
    agrees with torchmetrics in float64 to ~1e-6.
    """
    x = x.to(torch.float32) - 128.0
    y = y.to(torch.float32) - 128.0
    b = x.shape[0]
    w = torch.tensor(betas, dtype=torch.float64)
    w = w / w.sum()
    pad = 5
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    terms = []
    for scale in range(len(betas)):
        mx, my, sxx, syy, sxy = _blur(torch.cat([x, y, x * x, y * y, x * y])).split(b)
        vx = (sxx - mx * mx).clamp_min(0)
        vy = (syy - my * my).clamp_min(0)
        cs_map = (2 * (sxy - mx * my) + c2) / (vx + vy + c2)
        if scale < len(betas) - 1:
            inner = cs_map[..., pad:-pad, pad:-pad] if min(cs_map.shape[-2:]) > 2 * pad else cs_map
            terms.append(inner.reshape(b, -1).mean(-1, dtype=torch.float64).clamp_min(0))
            x = F.avg_pool2d(x, 2)
            y = F.avg_pool2d(y, 2)
        else:
            mx, my = mx + 128.0, my + 128.0
            # (2 mx my + C1) / (mx² + my² + C1), written as 1 − (mx − my)² / (...) to stay exact near 1.
            lum = 1.0 - (mx - my) ** 2 / (mx * mx + my * my + c1)
            terms.append((lum * cs_map).reshape(b, -1).mean(-1, dtype=torch.float64).clamp_min(0))
    return torch.prod(torch.stack(terms) ** w.view(-1, 1), dim=0)


def pseudo_mos(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
    """Labels for a batch of (B, H, W, 3) uint8 pairs: q = 1 − sqrt(1 − MS-SSIM), clamped to [0, 1]."""
    ref = torch.from_numpy(np.array(reference)).permute(0, 3, 1, 2)  # a copy: inputs may be read-only
    dist = torch.from_numpy(np.array(distorted)).permute(0, 3, 1, 2)
    score = ms_ssim(dist, ref).clamp(0.0, 1.0)
    q = 1.0 - torch.sqrt(1.0 - score)
    q = torch.where(torch.from_numpy((reference == distorted).reshape(len(ref), -1).all(1)), 1.0, q)
    return q.clamp(0.0, 1.0).numpy()
