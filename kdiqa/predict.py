"""Score images with a saved or exported model: files, folders or CSV lists of any size.

At folder scale decoding is much of the cost (a 1024×768 JPEG takes milliseconds to decode, longer
than a small student takes to score its view), so:

- images are decoded in DataLoader worker processes (``workers``, default one per core up to 8) and
  scored in batches in this process, in the order :func:`collect_images` gives (sorted per folder);
- a JPEG is decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (``draft``, PIL's DCT scaling)
  as long as the result still covers ``DRAFT_MARGIN`` times the model's input, then resized exactly
  as the model's eval view (:class:`kdiqa.data.views.ViewSampler`) does. That swaps part of the
  downscaling filter only, and the margin keeps the swap small: an IQA model reads sharpness, and on
  the benchmark's photographs (quickstart student, 64 px) decoding down to 1× the input moved
  scores by up to 0.017, down to 2× by up to 0.003 (``benchmarks/predict_folder.py`` measures it;
  ``draft=False`` decodes every pixel);
- rows go to the output as they are scored, and ``resume`` continues an interrupted output without
  rescoring (:mod:`kdiqa.predictions`, which also says why the final file can be trusted);
- an unreadable image is skipped with a one-line warning and a row with its error, never an abort.

This module imports neither Lightning nor diffusers, nor does loading a student folder or an exported
file: ``kdiqa predict`` starts in about the time torch (and timm, for a student folder) take to import.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdiqa.data.images import IMAGE_SUFFIXES, load_image
from kdiqa.data.views import ViewSampler
from kdiqa.errors import DataError, KdiqaError
from kdiqa.exported import exported_format, load_exported
from kdiqa.measure import default_device, predicted_score
from kdiqa.models import load_model
from kdiqa.predictions import PredictionsFile, partial_path

DEFAULT_BATCH_SIZE = 32
DRAFT_MARGIN = 2  # a drafted JPEG keeps at least this many pixels per input pixel, each way (see above)
MAX_DEFAULT_WORKERS = 8  # beyond this, decoding is rarely the bottleneck and each worker holds its own batches


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Decoding processes by default: one per core this process may use, at most ``MAX_DEFAULT_WORKERS``."""
    return max(1, min(MAX_DEFAULT_WORKERS, available_cores()))


@contextmanager
def model_threads(workers: int, device: torch.device) -> Iterator[None]:
    """A CPU model's threads while ``workers`` decode: the cores they leave (at least 1), restored after.

    Why: torch's threads spin-wait for each other, so a model on as many threads as there are cores,
    sharing them with busy decoding workers, runs several times slower than on one thread.
    """
    before = torch.get_num_threads()
    if workers and device.type == "cpu":
        torch.set_num_threads(max(1, min(before, available_cores() - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, image suffixes only, sorted) and CSV lists (a ``path`` column)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise DataError(f"{path}: a CSV of images needs a 'path' column (found: {', '.join(reader.fieldnames or [])})")
                found += [Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"] for row in reader]
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return found


class ImageViews(Dataset):
    """The eval view of each image (the model's input), decoded where the DataLoader runs it.

    An item is ``(index, view or None, error)``: a file that cannot be read becomes an error, not an
    exception, so one bad file never stops a worker.
    """

    def __init__(self, images: Sequence[Path], sampler: ViewSampler, draft: bool = True) -> None:
        self.images = images
        self.sampler = sampler
        height, width = sampler.size
        self.reduce_to = (DRAFT_MARGIN * width, DRAFT_MARGIN * height) if draft else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = load_image(self.images[index], reduce_to=self.reduce_to)
            return index, self.sampler.apply(image, self.sampler.eval_params()), ""
        except DataError as exc:
            return index, None, str(exc)


def collate_views(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """A batch: the indices of the decoded images, their views stacked, and the errors by index."""
    good = [(i, view) for i, view, _ in items if view is not None]
    views = torch.stack([view for _, view in good]) if good else None
    return [i for i, _ in good], views, {i: error for i, view, error in items if view is None}


def check_loader_options(batch_size: int, workers: int | None) -> None:
    if batch_size < 1:
        raise KdiqaError(f"predict --batch-size: must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise KdiqaError(f"predict --workers: must be >= 0, got {workers}")


def view_loader(images: Sequence[Path], size: int | tuple[int, int], batch_size: int = DEFAULT_BATCH_SIZE,
                workers: int | None = None, draft: bool = True, pin_memory: bool = False) -> DataLoader:
    """Batches of eval views in input order: ``(indices, views or None, {index: error})``.

    No more workers than batches (each worker is a process to start); ``workers=0`` decodes here.
    """
    check_loader_options(batch_size, workers)
    workers = default_workers() if workers is None else workers
    workers = min(workers, math.ceil(len(images) / batch_size))
    dataset = ImageViews(images, ViewSampler(size, train=False), draft=draft)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_views,
                      pin_memory=pin_memory)


def model_image_size(model: Any, size: int | None) -> int | tuple[int, int]:
    if size is not None:
        return size
    configured = getattr(model, "config", {}).get("image_size")
    if configured is None:
        raise KdiqaError("predict: this model does not record its input size; pass --size")
    return tuple(configured) if isinstance(configured, list) else int(configured)


def load_scorer(model_path: str | Path) -> tuple[Any, torch.device]:
    """A saved model folder, or an exported .onnx / TorchScript file behind the same interface; eval mode."""
    model = load_exported(model_path) if exported_format(model_path) else load_model(model_path)
    device = default_device()
    return model.eval().to(device), device


@torch.inference_mode()
def score_batches(model: Any, device: torch.device, images: Sequence[Path], size: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                  draft: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Rows ``{"path", "score" (None if skipped), "error"}`` per batch, in input order.

    A skipped image also gets a one-line warning on stderr.
    """
    loader = view_loader(images, model_image_size(model, size), batch_size, workers, draft, pin_memory=device.type == "cuda")
    with model_threads(loader.num_workers, device):
        for indices, views, errors in loader:
            scores: dict[int, float] = {}
            if views is not None:
                values = predicted_score(model(views.to(device))).float().cpu().tolist()
                scores = dict(zip(indices, values, strict=True))
            for message in errors.values():
                print(f"kdiqa: warning: skipped {message}", file=sys.stderr)
            yield [{"path": str(images[i]), "score": scores.get(i), "error": errors.get(i, "")} for i in sorted([*scores, *errors])]


def _record(model_path: str | Path, paths: Sequence[str | Path], size: int | None, draft: bool) -> dict[str, Any]:
    """What an output was started with; ``--resume`` must match it (:mod:`kdiqa.predictions`)."""
    return {"model": str(Path(model_path).resolve()), "inputs": [str(Path(p).resolve()) for p in paths],
            "size": size, "draft": draft}


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict` did: rows in the output (``resumed`` of them from before), how many scored."""

    rows: int
    scored: int
    resumed: int
    first_error: str
    out: Path | None


def predict(model_path: str | Path, paths: Sequence[str | Path], out: str | Path | None = None, *,
            batch_size: int = DEFAULT_BATCH_SIZE, size: int | None = None, workers: int | None = None,
            draft: bool = True, resume: bool = False) -> PredictSummary:
    """Score every image under ``paths`` into ``out`` (.csv or .json; None: CSV on stdout) as they come.

    A progress bar with rate and ETA shows on a terminal (stderr). ``resume`` continues an
    interrupted ``out`` (:mod:`kdiqa.predictions`).
    """
    check_loader_options(batch_size, workers)  # before any file is written
    model, device = load_scorer(model_path)
    images = collect_images(paths)
    if not images:
        raise KdiqaError(f"predict: no images found in {' '.join(str(p) for p in paths)}")
    first_error = ""
    with PredictionsFile(out, _record(model_path, paths, size, draft), resume=resume) as output:
        todo = [] if output.complete_already else _not_done(images, output.done)
        if output.complete_already:
            print(f"kdiqa: {out} is complete already ({output.rows} rows): nothing to resume", file=sys.stderr)
        elif output.done:
            print(f"kdiqa: resuming {partial_path(out)}: {output.rows} rows kept, {len(todo)} images to score", file=sys.stderr)
        resumed = output.rows
        with tqdm(total=len(todo), desc="predict", unit="img", disable=None, file=sys.stderr) as bar:
            for rows in score_batches(model, device, todo, size, batch_size, workers, draft):
                output.write(rows)
                first_error = first_error or next((r["error"] for r in rows if r["error"]), "")
                bar.update(len(rows))
    return PredictSummary(rows=output.rows, scored=output.scored, resumed=resumed, first_error=first_error,
                          out=None if out is None else Path(out))


def _not_done(images: Sequence[Path], done: Counter[str]) -> list[Path]:
    """The images without a row yet, in order; a path listed twice is done once per row it has."""
    todo = []
    for path in images:
        if done[str(path)]:
            done[str(path)] -= 1
        else:
            todo.append(path)
    return todo


def predict_paths(model_path: str | Path, paths: Sequence[str | Path], out: str | Path | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, size: int | None = None, workers: int | None = 0,
                  draft: bool = True) -> list[dict[str, Any]]:
    """The rows in memory, for a few images (notebooks, tests); :func:`predict` streams a library to a file.

    Decodes in this process by default (``workers=0``): for a few images a worker costs more than it saves.
    """
    model, device = load_scorer(model_path)
    rows = [row for batch in score_batches(model, device, collect_images(paths), size, batch_size, workers, draft)
            for row in batch]
    if out is not None:
        with PredictionsFile(out, _record(model_path, paths, size, draft)) as output:
            output.write(rows)
    return rows
