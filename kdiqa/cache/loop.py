"""The write loop: render the pending batches' views, run the teacher, store its targets batch by batch.

Views are rendered in DataLoader workers (one item per batch, each image decoded once per batch); the
teacher runs in eval mode under ``no_grad`` (and under autocast when ``cache.precision`` asks,
:mod:`kdiqa.cache.precision`) and gets its mode back; what it returns goes through
:func:`kdiqa.cache.targets.teacher_targets`, as online distillation's targets do, then is cast to the
stored dtype and checked finite before it is written (:mod:`kdiqa.cache.partial`); int8 maps are
quantized after the check (:mod:`kdiqa.cache.quantize`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdiqa.cache import layout as L
from kdiqa.cache import partial as P
from kdiqa.cache.errors import CacheError
from kdiqa.cache.plan import CachePlan, draw_view
from kdiqa.cache.precision import teacher_autocast
from kdiqa.cache.progress import Meter
from kdiqa.cache.quantize import quantize
from kdiqa.cache.spec import CacheSpec
from kdiqa.cache.targets import teacher_targets
from kdiqa.data.images import load_image
from kdiqa.data.sample import IQASample
from kdiqa.errors import ConfigError, DataError, KdiqaError
from kdiqa.io import os_reason


@dataclass
class CacheRun:
    """One execution of the write loop over the pending batches of a plan."""

    spec: CacheSpec
    teacher: nn.Module
    samples: Sequence[IQASample]
    plan: CachePlan
    partial: Path
    fingerprints: dict[str, str]
    say: Callable[[str], None]
    unreadable: list[str] = field(default_factory=list)  # why each unreadable pool image met in this run was skipped

    @property
    def teacher_name(self) -> str:
        return getattr(self.teacher, "name", "") or type(self.teacher).__name__

    def pending_blocks(self) -> list[tuple[int, int]]:
        blocks = self.plan.blocks()
        if not self.partial.exists():
            return blocks
        start = self.plan.rows[0]
        with P.open_partial(self.partial, "r") as f:
            done = f[L.DONE][...]
        return [(a, b) for a, b in blocks if not done[a - start : b - start].all()]

    def execute(self, device: str | torch.device | None, num_workers: int) -> tuple[int, int]:
        """Write every pending batch; returns (views written now, views an earlier run wrote)."""
        pending = self.pending_blocks()
        total = self.plan.rows[1] - self.plan.rows[0]
        todo = sum(b - a for a, b in pending)
        if not pending:
            return 0, total
        dev = _device(self.teacher, device)
        autocast = teacher_autocast(dev, self.spec.precision)  # refuses a precision the device lacks, before any work
        was_training = self.teacher.training
        self.teacher.eval()
        sink: P.Sink | None = P.Sink(self.partial) if self.partial.exists() else None
        written = 0
        meter = Meter(self.say, todo, total - todo)
        try:
            with torch.no_grad(), autocast:
                for batch in self.batches(pending, num_workers):
                    out = self.teacher(batch["images"].to(dev, non_blocking=True))
                    arrays = self.arrays(out, batch)
                    self.unreadable += batch["errors"]
                    if sink is None:
                        P.create(self.partial, self.fingerprints, self.meta(arrays), arrays)
                        sink = P.Sink(self.partial)
                    P.write_batch(sink, batch, arrays)
                    written += len(batch["rows"])
                    meter.update(len(batch["rows"]))
        except KdiqaError:
            raise
        except OSError as exc:
            done = total - todo + written
            raise CacheError(
                f"{self.partial}: cannot write {P.WHAT}: write failed after {done} of {total} views ({os_reason(exc)}); "
                "the file is resumable: fix the cause (e.g. free disk space) and rerun `kdiqa cache`"
            ) from None
        finally:
            if sink is not None:
                sink.close()
            self.teacher.train(was_training)
        return written, total - todo

    def batches(self, pending: list[tuple[int, int]], num_workers: int) -> Iterator[dict[str, Any]]:
        views = BlockViews(self.samples, self.spec, self.plan, pending)
        loader = DataLoader(views, batch_size=None, shuffle=False, num_workers=num_workers)
        for item in loader:
            yield {k: (v.numpy() if isinstance(v, torch.Tensor) and k != "images" else v) for k, v in item.items()}

    def arrays(self, out: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Teacher outputs of one batch as the numpy arrays to store (pooled, cast, checked)."""
        n = len(batch["rows"])
        score = getattr(out, "score", None)
        if not isinstance(score, torch.Tensor) or score.numel() != n:
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise CacheError(f"teacher {self.teacher_name!r}: score must be a (B,) tensor, got {got} for B={n}")
        quantized = self.spec.dtype == "int8"  # checked as float32, quantized at the end
        feature_dtype = np.dtype(np.float32 if quantized else self.spec.dtype)
        arrays: dict[str, np.ndarray] = {}
        for name, tensor in teacher_targets(out, self.spec.features, self.spec.pool, "cache.features").items():
            if name == "score":
                arrays[L.SCORE] = tensor.reshape(n).cpu().numpy()
            elif name == "dist":
                arrays[L.DIST] = tensor.reshape(n, -1).cpu().numpy()
            else:
                with np.errstate(over="ignore"):  # an overflow to inf is reported below, with the image
                    arrays[L.feature_dataset(name)] = tensor.cpu().numpy().astype(feature_dtype, copy=False)
        skipped = np.asarray(batch.get("bad", np.zeros(n, dtype=bool)), dtype=bool)
        for key, arr in arrays.items():
            finite = np.isfinite(arr.reshape(n, -1)).all(axis=1) | skipped
            if not finite.all():
                bad = int(np.nonzero(~finite)[0][0])
                image = self.samples[self.plan.image_of(int(batch["rows"][bad]))].path
                extra = " (float16 overflows above 65504: set cache.dtype: float32)" if arr.dtype == np.float16 else ""
                if self.spec.precision == "fp16":
                    extra += " (the teacher may overflow in fp16 autocast: set cache.precision: bf16 or fp32)"
                raise CacheError(f"{image}: teacher output {key!r} is not finite for this image's view{extra}")
            if skipped.any():
                arr[skipped] = np.nan  # the views of an unreadable pool image hold no target (layout.py)
        if quantized:
            for key in [k for k in arrays if k.startswith(L.FEATURES + "/")]:
                arrays[key], arrays[L.quant_dataset(L.feature_name(key))] = quantize(arrays[key])
        return arrays

    def meta(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """The file's ``meta`` attribute; refuses a feature too large to store unpooled."""
        targets: dict[str, Any] = {}
        for key, arr in arrays.items():
            if key.startswith(L.FEATURES + "/"):
                name = L.feature_name(key)
                per_view = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
                if per_view > self.spec.max_feature_bytes:
                    raise ConfigError(
                        f"cache.features: {name!r} is {'×'.join(map(str, arr.shape[1:]))} = {per_view / 2**20:.1f} MiB "
                        f"per view as {arr.dtype}; cache it pooled (cache.pool: {{{name}: 8}}) or leave it out"
                    )
                targets[name] = {"dataset": key, "shape": list(arr.shape[1:]), "dtype": str(arr.dtype),
                                 "pool": list(self.spec.pool[name]) if name in self.spec.pool else None}
                if self.spec.dtype == "int8":  # where its scales and zero points are (kdiqa.cache.quantize)
                    targets[name]["quant"] = L.quant_dataset(name)
        start, stop = self.plan.rows
        return {
            "num_images": self.plan.num_images,
            "views_per_image": self.plan.views_per_image,
            "first_view_eval": self.spec.first_view_eval,
            "seed": self.spec.seed,
            "batch_size": self.plan.batch_size,
            "rows": [start, stop],
            "total_rows": self.plan.total_rows,
            "shard": [self.plan.shard_index, self.plan.shard_count],
            "sampler": self.spec.sampler.as_dict(),
            "teacher": self.teacher_name,
            "dist_bins": int(arrays[L.DIST].shape[1]) if L.DIST in arrays else None,
            "targets": targets,
            "dtype": self.spec.dtype,
            "precision": self.spec.precision,
            "compression": "none",
        }


class BlockViews(Dataset):
    """One item per pending batch: its rows' views rendered, each image decoded once per batch."""

    def __init__(self, samples: Sequence[IQASample], spec: CacheSpec, plan: CachePlan, blocks: list[tuple[int, int]]) -> None:
        self.samples, self.spec, self.sampler, self.plan, self.blocks = samples, spec, spec.sampler, plan, blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, j: int) -> dict[str, Any]:
        start, stop = self.blocks[j]
        rows = np.arange(start, stop, dtype=np.int64)
        images, params, index, view_id, mos, bad = [], [], [], [], [], []
        errors: list[str] = []
        decoded: dict[int, Any] = {}
        for row in rows:
            i, k = self.plan.image_of(int(row)), self.plan.view_of(int(row))
            if i not in decoded:
                decoded = {i: self._decode(i, errors)}  # rows are image-major: keep one image
            image = decoded[i]
            if image is None:  # an unreadable pool image: a blank stand-in keeps the batch's shape
                p = self.sampler.eval_params()
                images.append(torch.zeros(3, *self.sampler.size))
            else:
                p = draw_view(self.sampler, image.size, self.spec.seed, i, k, self.spec.first_view_eval)
                images.append(self.sampler.apply(image, p))
            bad.append(image is None)
            params.append(p.to_array())
            index.append(i)
            view_id.append(k)
            mos.append(self.samples[i].mos)
        return {
            "rows": rows,
            "images": torch.stack(images),
            "params": np.stack(params),
            "index": np.asarray(index, dtype=np.int64),
            "view_id": np.asarray(view_id, dtype=np.int32),
            "mos": np.asarray(mos, dtype=np.float32),
            "bad": np.asarray(bad, dtype=bool),
            "errors": errors,
        }

    def _decode(self, i: int, errors: list[str]) -> Any:
        """Image ``i``, or None for an unlabelled image that does not decode (its reason goes to ``errors``).

        A user's photo library holds the odd broken file; one must not stop a long cache run. A broken
        *labelled* image is still an error, as in every other stage.
        """
        try:
            return load_image(self.samples[i].path)
        except DataError as exc:
            if math.isfinite(self.samples[i].mos):
                raise
            errors.append(str(exc))
            return None


def _device(teacher: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        teacher.to(dev)
        return dev
    first = next(iter(teacher.parameters()), None)
    return first.device if first is not None else torch.device("cpu")

