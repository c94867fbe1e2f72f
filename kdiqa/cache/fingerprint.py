"""Fingerprints: short digests that tell whether a cache still belongs to a recipe.

A cache is only valid for the teacher that wrote it (config *and* weights: a fine-tuned teacher with
the same config gives other targets), the image list and labels it indexes, the views it replays and
the targets it stores. Each gets its own digest, so a refusal can say *which* of them changed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from kdiqa.cache.errors import CacheError
from kdiqa.cache.layout import dumps
from kdiqa.data.sample import IQASample
from kdiqa.data.views import ViewSampler
from kdiqa.io import _SAFETENSORS_DTYPES

DIGEST_BYTES = 16
STAMP_EDGE_BYTES = 4096  # bytes read at each end of an unlabelled image by file_stamp

# what each fingerprint covers, for error messages
MEANING = {
    "teacher": "the teacher's config or weights changed",
    "dataset": "the image list, the labels or the unlabelled pool's files changed",
    "views": "the view policy (sampler, views per image, first view, seed) changed",
    "targets": "the stored features, pooling, dtype or the teacher's precision (cache.precision) changed",
}


def _digest() -> Any:
    return hashlib.blake2b(digest_size=DIGEST_BYTES)


def teacher_fingerprint(teacher: nn.Module) -> str:
    """Digest of the teacher's registry name, config and every tensor of its state dict.

    Hashing the weights costs a few seconds for a 1B-parameter teacher, once per cache run; it is
    the only way to notice that a teacher was retrained under the same config.
    """
    h = _digest()
    identity = {
        "name": getattr(teacher, "name", "") or f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        "config": getattr(teacher, "config", {}),
    }
    h.update(dumps(_jsonable(identity)).encode())
    for key, tensor in sorted(teacher.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.numel():
            h.update(data.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def saved_teacher_fingerprint(config: Mapping[str, Any], weights: str | os.PathLike) -> str:
    """:func:`teacher_fingerprint` of a saved teacher, read from its files without building it.

    ``config``: its ``config.json`` (``{"teacher": name, "config": {...}}``); ``weights``: its
    ``model.safetensors``, which holds exactly the state dict (``save_pretrained``), so the digest is the
    one the built teacher gives. Why: a stage that only reads a cache must check it without loading a
    teacher of a billion parameters, or one registered by a plugin it does not import.
    """
    h = _digest()
    h.update(dumps(_jsonable({"name": config["teacher"], "config": config.get("config", {})})).encode())
    with open(weights, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        start = 8 + size
        for key in sorted(k for k in header if k != "__metadata__"):
            info = header[key]
            h.update(f"{key}|{_SAFETENSORS_DTYPES[info['dtype']]}|{tuple(info['shape'])}".encode())
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            left = end - begin
            while left:  # in pieces: a large teacher is never held in memory
                piece = f.read(min(left, 64 << 20))
                if not piece:
                    raise EOFError(f"{weights}: the file ends inside {key!r}")
                h.update(piece)
                left -= len(piece)
    return h.hexdigest()


def dataset_fingerprint(samples: Sequence[IQASample]) -> str:
    """Digest of the ordered file list and labels (MOS and score distribution).

    Paths are taken relative to the samples' common folder, so moving a dataset to another disk
    keeps its caches valid, while adding, removing, reordering or relabelling images does not.
    An unlabelled (pool) image has no label to change with its pixels, so its file itself is covered
    instead, by :func:`file_stamp`; labelled images keep the digest they always had.
    """
    h = _digest()
    paths = [os.path.abspath(s.path) for s in samples]
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    h.update(str(len(paths)).encode())
    for sample, path in zip(samples, paths, strict=True):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if math.isfinite(sample.mos):
            dist = None if sample.dist is None else [float(v) for v in sample.dist]
            h.update(dumps([rel, float(sample.mos), dist]).encode())
        else:
            h.update(dumps([rel, "unlabelled", file_stamp(path)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def file_stamp(path: str, edge: int = STAMP_EDGE_BYTES) -> str:
    """Size and a digest of the first and last ``edge`` bytes of a file (all of it when small).

    Why not the whole file: a pool may hold a photo library, and this runs on every cache build and
    distillation start; why not the modification time: copying a dataset elsewhere changes it. A
    re-encoded or replaced image changes its size or its ends (JPEG and PNG data run to the end of
    the file); an edit of the same size in the middle of a large file goes unnoticed.
    """
    h = _digest()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(f.read(edge))
            if size > 2 * edge:
                f.seek(size - edge)
            h.update(f.read(edge))
    except OSError:
        return "unreadable"
    return f"{size}:{h.hexdigest()}"


def view_fingerprint(sampler: ViewSampler, views_per_image: int, first_view_eval: bool, seed: int) -> str:
    """Digest of everything that decides which views are drawn and how they are rendered."""
    policy = {
        "sampler": sampler.as_dict(),
        "views_per_image": int(views_per_image),
        "first_view_eval": bool(first_view_eval),
        "seed": int(seed),
    }
    return _digest_of(policy)


def targets_fingerprint(features: Sequence[str], pool: Mapping[str, Any], dtype: str, precision: str = "fp32") -> str:
    """Digest of what is stored per view: feature names, their pooling, the feature dtype (float16,
    float32, int8), and the precision the teacher ran in.

    fp32 is left out of the digest, so caches written before ``cache.precision`` existed (all fp32)
    keep their fingerprint; bf16 and fp16 targets are other numbers and get another one.
    """
    covered: dict[str, Any] = {"features": list(features), "pool": {k: pool[k] for k in sorted(pool)}, "dtype": dtype}
    if precision != "fp32":
        covered["precision"] = precision
    return _digest_of(covered)


def check_fingerprints(
    where: str, stored: Mapping[str, str], expected: Mapping[str, str] | None, hint: str
) -> None:
    """Raise a one-line CacheError naming the first fingerprint that differs (or is missing)."""
    for key, value in (expected or {}).items():
        have = stored.get(key)
        if have != value:
            why = MEANING.get(key, f"the {key!r} fingerprint changed")
            have_text = "none" if have is None else have[:12]
            raise CacheError(
                f"{where}: {key} fingerprint differs (cache {have_text}, expected {str(value)[:12]}): "
                f"{why} since the cache was written; {hint}"
            )


def _digest_of(obj: Any) -> str:
    h = _digest()
    h.update(dumps(_jsonable(obj)).encode())
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (OmegaConf containers and tuples become dicts and lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if OmegaConf.is_config(obj):  # a ListConfig
        return _jsonable(OmegaConf.to_container(obj, resolve=True))
    return str(obj)
