"""Score images with a saved model: files, folders or CSV lists, batched, never aborted by one bad file."""
from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kdiqa.data.images import IMAGE_SUFFIXES, load_image
from kdiqa.data.views import ViewSampler
from kdiqa.errors import DataError, KdiqaError
from kdiqa.exported import exported_format, load_exported
from kdiqa.io import atomic_path, write_json
from kdiqa.measure import default_device, predicted_score
from kdiqa.models import load_model


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, image suffixes only) and CSV lists (a ``path`` column)."""
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


def _batches(images: list[Path], sampler: ViewSampler, batch_size: int) -> Iterator[tuple[list[Path], torch.Tensor | None, list[tuple[Path, str]]]]:
    batch, tensors, errors = [], [], []
    for path in images:
        try:
            tensors.append(sampler.apply(load_image(path), sampler.eval_params()))
            batch.append(path)
        except DataError as exc:
            errors.append((path, str(exc)))
        if len(batch) == batch_size:
            yield batch, torch.stack(tensors), errors
            batch, tensors, errors = [], [], []
    if batch or errors:
        yield batch, (torch.stack(tensors) if tensors else None), errors


def model_image_size(model: Any, size: int | None) -> int | tuple[int, int]:
    if size is not None:
        return size
    configured = getattr(model, "config", {}).get("image_size")
    if configured is None:
        raise KdiqaError("predict: this model does not record its input size; pass --size")
    return tuple(configured) if isinstance(configured, list) else int(configured)


@torch.no_grad()
def predict_paths(model_dir: str | Path, paths: Sequence[str | Path], out: str | Path | None = None, batch_size: int = 32, size: int | None = None) -> list[dict[str, Any]]:
    # an exported .onnx / TorchScript file runs through its own runtime behind the same interface
    model = load_exported(model_dir) if exported_format(model_dir) else load_model(model_dir)
    device = default_device()
    model.eval().to(device)
    sampler = ViewSampler(model_image_size(model, size), train=False)
    images = collect_images(paths)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None, file=sys.stderr) as bar:
        for batch, x, errors in _batches(images, sampler, batch_size):
            if x is not None:
                output = model(x.to(device))
                scores = predicted_score(output).float().cpu().tolist()
                rows += [{"path": str(p), "score": s, "error": ""} for p, s in zip(batch, scores, strict=True)]
            for path, message in errors:
                print(f"kdiqa: warning: skipped {message}", file=sys.stderr)
                rows.append({"path": str(path), "score": None, "error": message})
            bar.update(len(batch) + len(errors))
    _write(rows, out)
    return rows


def _write(rows: list[dict[str, Any]], out: str | Path | None) -> None:
    if out is not None and str(out).endswith(".json"):
        write_json(out, rows, what="the predictions")
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "score", "error"])
    writer.writeheader()
    writer.writerows({**r, "score": "" if r["score"] is None else f"{r['score']:.6f}"} for r in rows)
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        with atomic_path(out, "the predictions") as tmp:
            tmp.write_text(buffer.getvalue())
