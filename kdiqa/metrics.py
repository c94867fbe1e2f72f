"""Quality metrics as the IQA literature reports them.

Correlations are computed once over the whole evaluation set (never averaged over batches), because
rank and linear correlations of batch means are not the correlation of the set. PLCC comes in two
flavours that papers mix up: ``plcc`` is the raw Pearson correlation (what pyiqa and DP-IQA report) and
``plcc_fitted`` is Pearson after the VQEG 4-parameter logistic mapping of predictions onto the target
scale. Both are always reported under their own names.

Degenerate inputs (constant predictions, fewer than 3 samples) give NaN and a :class:`MetricWarning`
instead of an exception, so one collapsed model does not abort a whole benchmark; malformed inputs
(different lengths, NaNs) raise ``ValueError`` because they are bugs upstream.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import optimize, stats

MIN_CORRELATION_SAMPLES = 3
LOGISTIC_PARAMS = 4

__all__ = [
    "MetricWarning",
    "srcc",
    "krcc",
    "plcc",
    "plcc_fitted",
    "rmse",
    "rmse_fitted",
    "logistic4",
    "iqa_metrics",
    "emd",
    "emd_loss",
    "dist_mean",
    "dist_std",
    "binary_accuracy",
]


class MetricWarning(RuntimeWarning):
    """A metric could not be computed meaningfully (reported as NaN) or fell back to a simpler fit."""


# --------------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim == 2 and 1 in arr.shape:  # (N, 1) model outputs are common; accept them
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s)")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains {int(np.isinf(arr).sum())} infinite value(s)")
    return arr


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_1d(pred, "pred")
    t = _as_1d(target, "target")
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"pred and target differ in length: pred has {p.shape[0]}, target has {t.shape[0]}")
    return p, t


def _degenerate_reason(p: np.ndarray, t: np.ndarray) -> str | None:
    """Why a correlation between ``p`` and ``t`` is undefined, or None if it is defined."""
    n = p.shape[0]
    if n < MIN_CORRELATION_SAMPLES:
        return f"only n={n} sample(s); at least {MIN_CORRELATION_SAMPLES} are needed"
    if np.all(p == p[0]):
        return f"predictions are constant (all {p[0]:g}) over n={n}"
    if np.all(t == t[0]):
        return f"targets are constant (all {t[0]:g}) over n={n}"
    return None


def _warn_nan(metrics: str, reason: str) -> None:
    warnings.warn(f"{metrics} is NaN: {reason}", MetricWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# correlations


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    return float(stats.pearsonr(p, t)[0])


def _spearman(p: np.ndarray, t: np.ndarray) -> float:
    return float(stats.spearmanr(p, t)[0])


def _kendall(p: np.ndarray, t: np.ndarray) -> float:
    return float(stats.kendalltau(p, t)[0])  # tau-b, which accounts for ties


def _correlation(name: str, fn: Callable[[np.ndarray, np.ndarray], float], pred: Any, target: Any) -> float:
    p, t = _pair(pred, target)
    reason = _degenerate_reason(p, t)
    if reason is not None:
        _warn_nan(name, reason)
        return math.nan
    return fn(p, t)


def srcc(pred: Any, target: Any) -> float:
    """Spearman rank correlation: the headline IQA number, insensitive to any monotone mapping."""
    return _correlation("srcc", _spearman, pred, target)


def krcc(pred: Any, target: Any) -> float:
    """Kendall rank correlation (tau-b, tie-corrected)."""
    return _correlation("krcc", _kendall, pred, target)


def plcc(pred: Any, target: Any) -> float:
    """Raw Pearson correlation, no fitting: the PLCC that pyiqa and DP-IQA report."""
    return _correlation("plcc", _pearson, pred, target)


# --------------------------------------------------------------------------------------------------
# the VQEG 4-parameter logistic


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's monotone logistic: ``b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500.0, 500.0)  # avoid overflow warnings far from b3
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


def _linear_fit(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    slope, intercept = np.polyfit(p, t, 1)
    return slope * p + intercept


def _fit_logistic(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Map ``p`` onto the scale of ``t``; assumes ``_degenerate_reason(p, t)`` is None."""
    n = p.shape[0]
    linear = _linear_fit(p, t)
    if n <= LOGISTIC_PARAMS:
        warnings.warn(
            f"logistic fit: n={n} samples cannot determine {LOGISTIC_PARAMS} parameters; "
            "plcc_fitted/rmse_fitted use a linear fit instead",
            MetricWarning,
            stacklevel=3,
        )
        return linear
    # Standardise both axes so one initial guess works whatever the score scales are.
    p_mean, p_std = p.mean(), p.std()
    t_mean, t_std = t.mean(), t.std()
    x = (p - p_mean) / p_std
    y = (t - t_mean) / t_std
    hi, lo = y.max(), y.min()
    if np.corrcoef(x, y)[0, 1] < 0:  # a decreasing relation: start from a decreasing logistic
        hi, lo = lo, hi
    guesses = [[hi, lo, 0.0, 1.0], [hi, lo, float(np.median(x)), 0.5], [hi, lo, 0.0, 3.0]]
    best: np.ndarray | None = None
    best_sse = math.inf
    failure = "did not converge"
    for guess in guesses:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # OptimizeWarning about the covariance is irrelevant here
                params, _ = optimize.curve_fit(logistic4, x, y, p0=guess, maxfev=20000)
        except (RuntimeError, ValueError, optimize.OptimizeWarning) as exc:
            failure = str(exc).splitlines()[0]
            continue
        fitted = logistic4(x, *params)
        sse = float(np.sum((fitted - y) ** 2))
        if np.all(np.isfinite(fitted)) and sse < best_sse:
            best, best_sse = fitted, sse
    linear_sse = float(np.sum((linear - t) ** 2)) / t_std**2
    if best is None:
        warnings.warn(
            f"logistic fit failed ({failure}); plcc_fitted/rmse_fitted use a linear fit instead",
            MetricWarning,
            stacklevel=3,
        )
        return linear
    # A near-linear relation is reached by the logistic only asymptotically, so it may trail the line by
    # a hair; only a clearly worse fit is a local minimum worth replacing.
    if best_sse > linear_sse * (1.0 + 1e-4) + 1e-12:
        warnings.warn(
            "logistic fit stuck in a local minimum worse than a straight line; "
            "plcc_fitted/rmse_fitted use a linear fit instead",
            MetricWarning,
            stacklevel=3,
        )
        return linear
    return best * t_std + t_mean


def plcc_fitted(pred: Any, target: Any) -> float:
    """Pearson correlation after the VQEG 4-parameter logistic fit of pred onto target."""
    p, t = _pair(pred, target)
    reason = _degenerate_reason(p, t)
    if reason is not None:
        _warn_nan("plcc_fitted", reason)
        return math.nan
    return _pearson(_fit_logistic(p, t), t)


def _rmse(p: np.ndarray, t: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - t) ** 2)))


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error of the raw predictions; meaningful only if they share the target's scale."""
    p, t = _pair(pred, target)
    if p.shape[0] == 0:
        _warn_nan("rmse", "no samples")
        return math.nan
    return _rmse(p, t)


def rmse_fitted(pred: Any, target: Any) -> float:
    """RMSE after the 4-parameter logistic fit, in target units (the VQEG convention)."""
    p, t = _pair(pred, target)
    reason = _degenerate_reason(p, t)
    if reason is not None:
        _warn_nan("rmse_fitted", reason)
        return math.nan
    return _rmse(_fit_logistic(p, t), t)


def iqa_metrics(pred: Any, target: Any) -> dict[str, float]:
    """All scalar IQA metrics over one evaluation set, fitting the logistic only once.

    Keys: ``srcc, krcc, plcc`` (raw Pearson), ``plcc_fitted`` (after the 4-parameter logistic),
    ``rmse`` (raw), ``rmse_fitted`` (after the logistic) and ``n`` (as a float, for uniform JSON).
    """
    p, t = _pair(pred, target)
    n = p.shape[0]
    out = {"srcc": math.nan, "krcc": math.nan, "plcc": math.nan, "plcc_fitted": math.nan}
    out["rmse"] = _rmse(p, t) if n else math.nan
    out["rmse_fitted"] = math.nan
    reason = _degenerate_reason(p, t)
    if reason is not None:
        _warn_nan("srcc, krcc, plcc, plcc_fitted, rmse_fitted", reason)
    else:
        fitted = _fit_logistic(p, t)
        out["srcc"] = _spearman(p, t)
        out["krcc"] = _kendall(p, t)
        out["plcc"] = _pearson(p, t)
        out["plcc_fitted"] = _pearson(fitted, t)
        out["rmse_fitted"] = _rmse(fitted, t)
    out["n"] = float(n)
    return out


# --------------------------------------------------------------------------------------------------
# score distributions (AVA / NIMA style: K bins for scores 1..K)


def _as_dist_numpy(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (K,) or (N, K), got shape {tuple(arr.shape)}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN values")
    if (arr < 0).any():
        raise ValueError(f"{name} contains negative probabilities")
    sums = arr.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(f"{name} has a row that sums to 0 (row {int(np.argmax(sums[:, 0] <= 0))})")
    return arr / sums  # vote counts are accepted and normalised


def emd(p: Any, q: Any, r: float = 2) -> float:
    """NIMA's earth mover's distance: ``(mean_k |CDF_p - CDF_q|^r)^(1/r)`` per row, then mean over rows.

    Rows are normalised to sum to 1, so raw vote counts may be passed.
    """
    pn = _as_dist_numpy(p, "p")
    qn = _as_dist_numpy(q, "q")
    if pn.shape != qn.shape:
        raise ValueError(f"p and q differ in shape: p is {pn.shape}, q is {qn.shape}")
    if r <= 0:
        raise ValueError(f"emd: r must be > 0, got {r}")
    diff = np.abs(np.cumsum(pn, axis=1) - np.cumsum(qn, axis=1))
    per_row = np.mean(diff**r, axis=1) ** (1.0 / r)
    return float(per_row.mean())


def emd_loss(p: torch.Tensor, q: torch.Tensor, r: float = 2, reduction: str = "mean") -> torch.Tensor:
    """Differentiable :func:`emd` on tensors of shape (N, K) or (K,), for training on distributions.

    Inputs are expected to be probabilities already (e.g. a softmax); rows are renormalised anyway.
    The root is taken through a guarded power so that identical rows give 0 with a finite (zero)
    gradient instead of the NaN a bare ``sqrt(0)`` would back-propagate.
    """
    if p.shape != q.shape:
        raise ValueError(f"p and q differ in shape: p is {tuple(p.shape)}, q is {tuple(q.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"emd_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if p.dim() == 1:
        p, q = p.unsqueeze(0), q.unsqueeze(0)
    p = p / p.sum(dim=-1, keepdim=True)
    q = q / q.sum(dim=-1, keepdim=True)
    diff = (torch.cumsum(p, dim=-1) - torch.cumsum(q, dim=-1)).abs()
    mean_pow = diff.pow(r).mean(dim=-1)
    tiny = torch.finfo(mean_pow.dtype).tiny
    per_row = torch.where(mean_pow > tiny, mean_pow.clamp_min(tiny).pow(1.0 / r), torch.zeros_like(mean_pow))
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def _scores(k: int, like: Any) -> Any:
    if isinstance(like, torch.Tensor):
        return torch.arange(1, k + 1, dtype=like.dtype, device=like.device)
    return np.arange(1, k + 1, dtype=np.float64)


def dist_mean(p: Any) -> Any:
    """Mean score of distributions over scores 1..K (K=10 for AVA); (N, K) → (N,), (K,) → scalar.

    Torch in → torch out (differentiable); anything else → numpy.
    """
    if isinstance(p, torch.Tensor):
        pn = p / p.sum(dim=-1, keepdim=True)
        return (pn * _scores(p.shape[-1], p)).sum(dim=-1)
    arr = _to_numpy(p)
    pn = arr / arr.sum(axis=-1, keepdims=True)
    return (pn * _scores(arr.shape[-1], arr)).sum(axis=-1)


def dist_std(p: Any) -> Any:
    """Standard deviation of the score under distributions over scores 1..K (same shapes as dist_mean)."""
    mean = dist_mean(p)
    if isinstance(p, torch.Tensor):
        pn = p / p.sum(dim=-1, keepdim=True)
        var = (pn * (_scores(p.shape[-1], p) - mean.unsqueeze(-1)) ** 2).sum(dim=-1)
        return var.clamp_min(0).sqrt()
    arr = _to_numpy(p)
    pn = arr / arr.sum(axis=-1, keepdims=True)
    var = (pn * (_scores(arr.shape[-1], arr) - np.expand_dims(mean, -1)) ** 2).sum(axis=-1)
    return np.sqrt(np.maximum(var, 0.0))


def binary_accuracy(pred: Any, target: Any, threshold: float) -> float:
    """Fraction of samples put on the same side of ``threshold`` (``>= threshold`` is "high").

    AVA's usual protocol uses mean scores and threshold 5.
    """
    p, t = _pair(pred, target)
    if p.shape[0] == 0:
        _warn_nan("binary_accuracy", "no samples")
        return math.nan
    return float(np.mean((p >= threshold) == (t >= threshold)))
