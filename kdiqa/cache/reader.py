"""Read a cache during distillation: the student gets the very view the teacher saw, plus its targets.

The image is not stored; it is re-rendered from the stored view parameters by the view sampler
(crop boxes are fractions of the image, so a student may even use another resolution than the
teacher). Only the teacher's outputs come from the file.

HDF5 handles do not survive ``fork`` or pickling, so none is held between calls: each DataLoader
worker opens its own on first use (and again if it finds itself in a new process), which works with
``num_workers=0``, ``num_workers>0`` and ``persistent_workers``. The small per-view arrays (indices,
view parameters, scores) are read once into memory; feature maps are read one row per item, and an int8
map is dequantized to float32 with its row's scales and zero points (:mod:`kdiqa.cache.quantize`), so
what the student gets looks the same whatever ``cache.dtype`` the cache was written with.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from kdiqa.cache import layout as L
from kdiqa.cache.errors import CacheError
from kdiqa.cache.fingerprint import check_fingerprints, dataset_fingerprint
from kdiqa.cache.handles import open_dataset
from kdiqa.cache.quantize import dequantize
from kdiqa.cache.shards import merge_shards
from kdiqa.cache.status import find_shards, open_readonly, require_complete
from kdiqa.data.images import load_image
from kdiqa.data.sample import IQASample
from kdiqa.data.views import ViewParams, ViewSampler

MISMATCH_HINT = "rebuild it with `kdiqa cache RECIPE --force`"
# HDF5 chunk cache (bytes, slots) of each feature dataset a reader opens: HDF5's default, 1 MiB, set here on
# purpose. A row is its own chunk and an epoch reads each row once, so a larger cache only serves later epochs
# of a dataset that fits in it whole, at its size per dataset per DataLoader worker; benchmarks/cache_scaling.py
# measured none, 1, 16 and 64 MiB at 1k-100k views, single-file and merged: 1 MiB was as fast as any, none ~5 %
# slower
READ_CHUNK_CACHE = (1 << 20, 521)


class CachedViews(Dataset):
    """Cached views as a torch Dataset.

    ``samples`` must be the list the cache was built from (checked by the dataset fingerprint);
    ``expected_fingerprints`` adds checks (e.g. the recipe's teacher and views fingerprints), as a
    mapping or as a function of the cache's stored ``meta`` (for digests that depend on how the cache
    was written, such as the view seed).
    ``split`` keeps the images of one split; ``view_ids`` keeps some views (e.g. ``[1, 2, 3]`` to leave
    out the evaluation view 0); ``views="all"`` makes one item per view (an epoch sees all K views of
    each image), ``views="random"`` one item per image with one of its views drawn at random on every
    access (from torch's RNG, which Lightning seeds per worker). ``features`` limits the feature maps
    read (default: all stored).

    Views of unlabelled images (``data.unlabelled``) have ``mos`` NaN (:meth:`labelled_items` says which
    items are labelled); views of unlabelled images that did not decode when the cache was written hold
    no targets and are left out (``unreadable_images`` counts them).

    Items: ``{"image": (3, H, W) float32, "mos": () float32, "index": image index, "view": view params
    (6,) float64, "view_id": int, "teacher": {"score": (), "dist": (K,) if stored, <feature>: float32}}``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        samples: Sequence[IQASample],
        sampler: ViewSampler,
        expected_fingerprints: Mapping[str, str] | Callable[[dict[str, Any]], Mapping[str, str]] | None = None,
        *,
        split: str | None = None,
        views: str = "all",
        view_ids: Sequence[int] | None = None,
        features: Sequence[str] | None = None,
        merge: bool = True,
    ) -> None:
        self.path = Path(path)
        self.samples = list(samples)
        self.sampler = sampler
        self.views = views
        if merge and not self.path.exists() and not L.partial_path(self.path).exists() and find_shards(self.path):
            try:
                merge_shards(self.path, progress=False)
            except CacheError:
                pass  # require_complete below explains what is missing
        header = require_complete(self.path)
        self.meta: dict[str, Any] = header["meta"]
        self.fingerprints: dict[str, str] = header["fingerprints"]
        where = str(self.path)
        check_fingerprints(where, self.fingerprints, {"dataset": dataset_fingerprint(self.samples)}, MISMATCH_HINT)
        if callable(expected_fingerprints):
            expected_fingerprints = expected_fingerprints(self.meta)
        check_fingerprints(where, self.fingerprints, expected_fingerprints, MISMATCH_HINT)

        targets: dict[str, Any] = self.meta["targets"]
        if features is None:
            features = list(targets)
        unknown = [name for name in features if name not in targets]
        if unknown:
            raise CacheError(f"{where}: holds no feature {unknown[0]!r} (it holds: {', '.join(targets) or 'none'})")
        self.features: dict[str, str] = {name: targets[name]["dataset"] for name in features}
        self._quant: dict[str, str] = {name: targets[name]["quant"] for name in features if targets[name].get("quant")}

        with open_readonly(self.path) as f:
            self._index = f[L.INDEX][...]
            self._view_id = f[L.VIEW_ID][...]
            self._params = f[L.PARAMS][...]
            self._mos = f[L.MOS][...]
            self._score = f[L.SCORE][...]
            self._dist = f[L.DIST][...] if L.DIST in f else None
        if len(self._index) and (self._index.min() < 0 or self._index.max() >= len(self.samples)):
            raise CacheError(f"{where}: image indices run to {int(self._index.max())}, but {len(self.samples)} samples were given")

        # rows of unlabelled images that did not decode hold NaN targets (layout.py): never served
        keep = np.isfinite(self._score)
        self.unreadable_images = len(np.unique(self._index[~keep]))
        if split is not None:
            in_split = np.array([s.split == split for s in self.samples], dtype=bool)
            keep &= in_split[self._index]
        if view_ids is not None:
            keep &= np.isin(self._view_id, np.asarray(list(view_ids), dtype=np.int64))
        self._rows = np.nonzero(keep)[0]
        if len(self._rows) == 0:
            raise CacheError(f"{where}: no cached views left after selecting split={split!r}, view_ids={view_ids!r}")
        images, starts = np.unique(self._index[self._rows], return_index=True)
        self._images = images
        # rows of each selected image, for views="random" (rows are image-major, so runs are contiguous)
        bounds = np.append(starts, len(self._rows))
        self._image_rows = [self._rows[bounds[j] : bounds[j + 1]] for j in range(len(images))]

        self._handle: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pid = -1

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self._rows) if self.views == "all" else len(self._images)

    def __getitem__(self, item: int) -> dict[str, Any]:
        if self.views == "all":
            row = int(self._rows[item])
        else:
            rows = self._image_rows[item]
            row = int(rows[int(torch.randint(len(rows), (1,)).item())]) if len(rows) > 1 else int(rows[0])
        return self.row(row)

    def row(self, row: int) -> dict[str, Any]:
        """Stored row ``row`` (ignores the split/view selection)."""
        index = int(self._index[row])
        params = ViewParams.from_array(self._params[row])
        image = self.sampler.apply(load_image(self.samples[index].path), params)
        teacher: dict[str, torch.Tensor] = {"score": torch.tensor(float(self._score[row]), dtype=torch.float32)}
        if self._dist is not None:
            teacher["dist"] = torch.from_numpy(self._dist[row].astype(np.float32))
        datasets = self._open()
        for name, key in self.features.items():
            values = datasets[key][row]
            if name in self._quant:
                values = dequantize(values, datasets[self._quant[name]][row])
            teacher[name] = torch.from_numpy(values.astype(np.float32, copy=False))
        return {
            "image": image,
            "mos": torch.tensor(float(self._mos[row]), dtype=torch.float32),
            "index": index,
            "view": torch.from_numpy(self._params[row].copy()),
            "view_id": int(self._view_id[row]),
            "teacher": teacher,
        }

    # ------------------------------------------------------------------ handle per process
    def _open(self) -> dict[str, h5py.Dataset]:
        if self._handle is None or self._pid != os.getpid():
            # a handle inherited through fork belongs to the parent: drop it unused, open our own
            self._handle = open_readonly(self.path)
            self._datasets = {key: open_dataset(self._handle, key, READ_CHUNK_CACHE)
                              for key in [*self.features.values(), *self._quant.values()]}
            self._pid = os.getpid()
        return self._datasets

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._datasets, self._pid = None, {}, -1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_handle=None, _datasets={}, _pid=-1)
        return state

    # ------------------------------------------------------------------ facts
    def labelled_items(self) -> np.ndarray:
        """Per item (as ``__getitem__`` counts them), whether it has a label: False for pool views."""
        if self.views == "all":
            return np.isfinite(self._mos[self._rows])
        return np.array([np.isfinite(self._mos[rows[0]]) for rows in self._image_rows], dtype=bool)

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(self.meta["targets"][name]["shape"]) for name in self.features}
