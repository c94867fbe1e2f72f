"""Benchmark: CPU latency of a student in PyTorch eager vs its TorchScript and ONNX Runtime exports.

    .venv/bin/python benchmarks/export_latency.py [--backbones efficientnet_b0,mobilenetv3_small_100]
        [--size 224] [--batches 1,8] [--repeats 30] [--threads 1]

For each backbone: a student with random weights (pooled-MLP head, no projectors) is saved, exported
with ``kdiqa.export.export_student`` (dynamic batch; the built-in parity check runs), and the three
runtimes are timed on the same input, interleaved round by round so that load from other processes
hits all of them alike. Printed: median milliseconds per batch (and the spread, p10-p90), and each
runtime's speed-up over eager (eager ms / runtime ms), side by side. Eager is the student's own
forward under ``torch.inference_mode`` (what ``kdiqa predict`` runs); ``--threads`` is given to both
torch and onnxruntime so they compete on equal terms.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.export import export_student  # noqa: E402
from kdiqa.exported import OnnxModel, TorchScriptModel  # noqa: E402
from kdiqa.measure import count_parameters, machine_context, percentile, time_interleaved  # noqa: E402
from kdiqa.registry import STUDENTS  # noqa: E402
from kdiqa.students.base import Student  # noqa: E402

RUNTIMES = ("eager", "torchscript", "onnxruntime")


def prepare(backbone: str, size: int, folder: Path, threads: int) -> tuple[dict, dict]:
    torch.manual_seed(0)
    student = STUDENTS.build("timm", backbone=backbone, image_size=size)
    params = count_parameters(student)
    student.save_pretrained(folder)
    ts = export_student(folder, "torchscript", out=folder / "m.pt", dynamic_batch=True)
    onnx = export_student(folder, "onnx", out=folder / "m.onnx", dynamic_batch=True)
    eager = Student.from_pretrained(folder)
    runners = {
        "eager": lambda x: eager(x)["score"],
        "torchscript": TorchScriptModel(folder / "m.pt"),
        "onnxruntime": OnnxModel(folder / "m.onnx", providers=["CPUExecutionProvider"], threads=threads),
    }
    info = {"params": params, "diff_ts": ts["parity"]["max_abs_diff"], "diff_onnx": onnx["parity"]["max_abs_diff"]}
    return runners, info


@torch.inference_mode()
def time_runtimes(runners: dict, x: torch.Tensor, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call, interleaved (kdiqa.measure.time_interleaved). The warm-up matters:
    TorchScript's profiling executor optimises over its first calls."""
    calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
    times = time_interleaved(calls, dict.fromkeys(runners, repeats), dict.fromkeys(runners, warmup))
    return {name: [1000 * t for t in ts] for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_b0,mobilenetv3_small_100")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    context = machine_context()
    print(f"# {context['date']}; {context['cpu']}, load average {context['load average']}")
    print(f"# python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"threads {args.threads}, size {args.size}, {args.repeats} interleaved repeats, median ms (p10-p90)")
    header = f"{'backbone':<24}{'batch':>6}" + "".join(f"{r:>24}" for r in RUNTIMES) + f"{'TS speed-up':>13}{'ORT speed-up':>14}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones.split(","):
            runners, info = prepare(backbone, args.size, Path(tmp) / backbone, args.threads)
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.rand(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
                times = time_runtimes(runners, x, args.repeats)
                med = {name: statistics.median(t) for name, t in times.items()}
                cells = "".join(
                    f"{f'{med[r]:.1f} ({percentile(times[r], 10):.1f}-{percentile(times[r], 90):.1f})':>24}" for r in RUNTIMES
                )
                print(f"{backbone:<24}{batch:>6}{cells}{med['eager'] / med['torchscript']:>12.2f}x{med['eager'] / med['onnxruntime']:>13.2f}x", flush=True)
            print(f"#   {backbone}: {info['params'] / 1e6:.2f} M parameters; export parity max |diff| "
                  f"TorchScript {info['diff_ts']:.1e}, ONNX {info['diff_onnx']:.1e}")


if __name__ == "__main__":
    main()
