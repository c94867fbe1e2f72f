"""Measuring a model, one way everywhere (report, bench, predict, evaluation): the score it predicts,
its size, its FLOPs, its speed and its peak memory, and the machine the figures were taken on.

Why each measurement is taken the way it is:

- FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` over one batch-1 forward: it counts
  2 FLOPs per multiply-add of convolutions, matrix products and attention, and nothing for elementwise
  ops, so the figure is comparable across architectures and does not depend on the machine.
- Times are taken in interleaved rounds (every model once per round, the order reversed each round) so
  that load from other processes on a shared machine hits every model alike.
- Peak memory on a GPU is ``torch.cuda.max_memory_allocated`` over one forward. A CPU has no such
  counter (RSS is shared with the allocator's caches and other threads), so there the peak is counted
  from the tensors themselves: weights, buffers and the input, plus the largest total of activation
  storages alive at once during the forward (:class:`LiveTensorBytes`). Kernel workspaces and
  allocator overhead are not included, so it is a lower bound of what the process needs.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from kdiqa.teachers.base import TeacherOutput

CPU_MEMORY_METHOD = "cpu: weights + input + peak live tensor storages (counted per op; no workspaces)"
CUDA_MEMORY_METHOD = "cuda: torch.cuda.max_memory_allocated"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predicted_score(out: Any) -> torch.Tensor:
    """The score from a teacher's TeacherOutput or a student's output dict."""
    if isinstance(out, TeacherOutput):
        return out.score
    if isinstance(out, dict):
        return out["score"]
    return out


def predicted_dist(out: Any) -> torch.Tensor | None:
    """The score distribution (B, K) of a TeacherOutput or a student's output dict, if it has one."""
    if isinstance(out, TeacherOutput):
        return out.dist
    if isinstance(out, dict):
        return out.get("dist")
    return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int, device: str | torch.device = "cpu") -> int:
    """FLOPs of one batch-1 forward at ``size``² (2 per multiply-add; see the module docstring)."""
    images = torch.rand(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(images)
    return int(counter.get_total_flops())


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: dict[str, int], warmup: dict[str, int], sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Seconds per call of each named callable, timed in rounds that visit every callable in turn.

    Each round reverses the previous round's order, so a slow spell of the machine does not always fall
    on the same model; a callable drops out of the rounds once it has its ``repeats`` timings.
    """
    for name, call in calls.items():
        for _ in range(warmup.get(name, 0)):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(max(repeats.values(), default=0)):
        for name in order if r % 2 == 0 else reversed(order):
            if len(times[name]) >= repeats[name]:
                continue
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def forward_call(model: nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    """One inference forward of ``model`` on ``images``, as a callable to time."""
    def call() -> Any:
        with torch.inference_mode():
            return model(images)

    return call


def device_sync(device: str) -> Callable[[], None]:
    """What waits for a device's queued work before a clock is read (nothing on a CPU)."""
    return (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)


def measure_latency(model: nn.Module, size: int, repeats: int = 20, warmup: int = 3, device: str = "cpu") -> tuple[float, float]:
    """Median and interquartile range of batch-1 forward time in milliseconds, after warm-up."""
    model = model.eval().to(device)
    x = torch.rand(1, 3, size, size, device=device)
    times = time_interleaved({"model": forward_call(model, x)}, {"model": repeats}, {"model": warmup}, device_sync(device))
    ms = [1000 * t for t in times["model"]]
    q = statistics.quantiles(ms, n=4)
    return statistics.median(ms), q[2] - q[0]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), defined for a single value too."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class LiveTensorBytes(TorchDispatchMode):
    """Track the bytes of tensor storages created under this mode and still alive; keep the peak.

    Storages that existed before (weights, buffers, the input) are passed as ``known`` and never counted:
    an op may return a view of them (a transposed weight) without allocating anything.
    """

    def __init__(self, known: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors referring to it]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.known:
            return
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


def tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def peak_memory(model: nn.Module, images: torch.Tensor) -> tuple[int, str]:
    """Peak bytes during one inference forward on ``images`` (weights included), and how it was measured."""
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        with torch.inference_mode():
            model(images)
        torch.cuda.synchronize(images.device)
        return int(torch.cuda.max_memory_allocated(images.device)), CUDA_MEMORY_METHOD
    known = [*model.parameters(), *model.buffers(), images]
    tracker = LiveTensorBytes(known)
    with torch.inference_mode(), tracker:
        model(images)
    base = tensor_bytes(model) + images.numel() * images.element_size()
    return base + tracker.peak, CPU_MEMORY_METHOD


def machine_context() -> dict[str, str]:
    """What a reader needs to judge the times: CPU, load, versions, threads, date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "gpu": gpu,
        "load average": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
    }
