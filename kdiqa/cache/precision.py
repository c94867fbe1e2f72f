"""``cache.precision``: the teacher's forward pass when caching, in fp32 or under bf16/fp16 autocast.

Why: on a GPU a half-precision forward costs about half, and a cache of a million views is the
teacher's largest bill. Its targets are other numbers, though (``benchmarks/cache_precision.py``
measures how far from fp32 on the tiny teacher), so the precision is part of the cache's targets
fingerprint: a recipe asking fp32 targets refuses a bf16 cache, and the other way round. fp32, the
default, runs the teacher exactly as before (no autocast at all).

A device that cannot autocast to the asked type is refused in one line before the first batch (torch
would otherwise warn and silently run in fp32, or fail deep in the teacher). fp16 on a CPU works but is
not accelerated on most CPUs (about 20-25× slower than fp32 for the tiny teacher here), which a warning says.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from kdiqa.errors import ConfigError, first_line

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # every choice of cache.precision but fp32


def teacher_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The context the cache runs the teacher in: nothing for fp32, else ``torch.autocast`` on ``device``
    to bf16/fp16, or a one-line ConfigError when the device cannot do that."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = AUTOCAST_DTYPES[precision]
    refuse = f"cache.precision: {precision} autocast is not supported on this {device.type} device"
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"{refuse}; use cache.precision: fp32")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{refuse} (this GPU has no bfloat16); use fp16 or fp32")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns and falls back to fp32 for a dtype a device lacks
            context = torch.autocast(device.type, dtype=dtype)
    except (RuntimeError, UserWarning) as exc:
        raise ConfigError(f"{refuse} ({first_line(exc, with_type=False)}); use cache.precision: fp32") from None
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn("cache.precision: fp16 on a CPU is usually far slower than fp32 (no fp16 kernels; "
                      "benchmarks/cache_precision.py); bf16 is the CPU's half precision", stacklevel=2)
    return context
