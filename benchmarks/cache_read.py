"""Benchmark: can the cache reader feed a student faster than the student trains?

    .venv/bin/python benchmarks/cache_read.py [--images 256] [--views 4] [--student kdiqa_cnn_small]

Prints, measured side by side in one run (best of --repeats epochs):
- reader: ``CachedViews`` through a DataLoader (image decoded and its view replayed from the stored
  parameters, plus score and an 8×16×16 fp16 quality map) with 0 and 2 workers, in views/s;
- the same views read without the cache (``IQADataset.view`` with the same parameters, same
  DataLoader), to show what the teacher targets add to plain image loading;
- the student's training throughput (forward, KD + MOS loss, backward, Adam step) on batches already
  in memory, in views/s;
- reader / student. Goal: ≥ 5×. With 2 workers the reader and the student share the 2 cores, so the
  0-worker figure (one core's worth of reading) is the honest one on this machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_write import ConvTeacher, make_images, sampler  # noqa: E402

from kdiqa.cache import CachedViews, CacheSpec, build_cache, cache_info  # noqa: E402
from kdiqa.data.datamodule import IQADataset  # noqa: E402
from kdiqa.data.views import ViewParams  # noqa: E402
from kdiqa.measure import count_parameters  # noqa: E402

BATCH = 64


def make_student(name: str) -> nn.Module:
    try:
        import timm

        import kdiqa.students  # noqa: F401  (registers the kdiqa_cnn_* timm models)

        return timm.create_model(name, num_classes=1)
    except Exception as exc:  # noqa: BLE001 - the benchmark still runs with a stand-in
        print(f"(student {name!r} unavailable: {type(exc).__name__}: {exc}; using a 4-stage plain CNN)")
        layers, width = [], 3
        for out in (32, 64, 128, 128):
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1))


def epoch_rate(loader: DataLoader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image"])
    return n / (time.perf_counter() - start)


class PlainViews(Dataset):
    """The cached views read without the cache (decode + replay, no teacher targets), for comparison."""

    def __init__(self, samples: list, views: list[tuple[int, ViewParams]]):
        self.data = IQADataset(samples, sampler())
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, j: int) -> dict:
        index, params = self.views[j]
        image, _ = self.data.view(index, params)
        return {"image": image, "mos": torch.tensor(self.data.samples[index].mos), "index": index,
                "view": torch.from_numpy(params.to_array())}


def student_rate(student: nn.Module, batches: list[dict]) -> float:
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    start, n = time.perf_counter(), 0
    for batch in batches:
        pred = student(batch["image"]).squeeze(1)
        loss = nn.functional.mse_loss(pred, batch["teacher"]["score"]) + nn.functional.mse_loss(pred, batch["mos"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(pred)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--student", default="kdiqa_cnn_small")
    parser.add_argument("--student-batches", type=int, default=8, help="batches per timed student pass")
    args = parser.parse_args()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load} "
          "(other processes only add time: each figure is the best of --repeats epochs)")
    with tempfile.TemporaryDirectory(prefix="kdiqa-cache-bench-") as tmp:
        folder = Path(tmp)
        samples = make_images(folder / "images", args.images)
        path = folder / "cache.h5"
        spec = CacheSpec(sampler(), views_per_image=args.views, features=["quality_map"], batch_size=64)
        summary = build_cache(spec, ConvTeacher(), samples, path, progress=False)
        info = cache_info(path)
        print(f"cache: {info['views']} views ({args.images} images × {args.views}), {info['bytes_per_view']} B/view, "
              f"{info['file_bytes'] / 2**20:.1f} MiB, written in {summary['seconds']:.1f} s")

        data = CachedViews(path, samples, sampler())
        views = [(int(data._index[r]), ViewParams.from_array(data._params[r])) for r in range(len(data))]
        loaders = {
            "reader, 0 workers": DataLoader(data, batch_size=BATCH, shuffle=True),
            "same views without the cache, 0 workers": DataLoader(PlainViews(samples, views), batch_size=BATCH, shuffle=True),
            "reader, 2 workers": DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True),
        }
        rates: dict[str, float] = dict.fromkeys(loaders, 0.0)
        for loader in loaders.values():
            epoch_rate(loader)  # warm-up (starts the workers)
        for _ in range(args.repeats):  # alternating, so that a burst of load elsewhere hits every loader alike
            for key, loader in loaders.items():
                rates[key] = max(rates[key], epoch_rate(loader))
        del loaders

        batches = list(DataLoader(data, batch_size=BATCH, shuffle=True))
        student = make_student(args.student)
        student_rate(student, batches[:2])  # warm-up
        timed = batches[: args.student_batches]
        rates["student training step"] = max(student_rate(student, timed) for _ in range(args.repeats))
        params = count_parameters(student)

    width = max(len(k) for k in rates)
    print(f"student: {args.student} ({params / 1e3:.0f} k parameters), batch {BATCH}, 64 px, Adam, MSE to teacher score + MOS")
    for key, rate in rates.items():
        print(f"  {key:<{width}}  {rate:8.1f} views/s")
    train = rates["student training step"]
    for workers in (0, 2):
        ratio = rates[f"reader, {workers} workers"] / train
        print(f"  reader ({workers} workers) / student: {ratio:5.1f}x  (goal >= 5x)")
    print(f"  cache reader vs plain view loading (0 workers): "
          f"{rates['reader, 0 workers'] / rates['same views without the cache, 0 workers']:.2f}x")


if __name__ == "__main__":
    main()
