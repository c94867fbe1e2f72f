"""Benchmark: `kdiqa convert` on a full-size released DP-IQA teacher — wall time and peak memory — then predict.

    .venv/bin/python benchmarks/convert_memory.py [--workdir /tmp/kdiqa-convert-bench] [--images 2] [--keep]

1. Writes an official-layout teacher state dict at full SD-1.5 size (VAE, U-Net, FullAdapter, text
   adapter, the official QFD with its unused ``bnc1`` and ``classifier_dist``: 1.07B parameters, 4.3 GB
   fp32) with random values, as ``torch.save(model.state_dict())`` would: the names are kdiqa's sd15
   teacher's (built on the meta device, no weights) renamed by the inverse of the key map, plus the
   two unused modules; values are slices of one random pool, He-scaled (speed and memory, not scores, are measured).
   Also a random (1485, 768) ``quality_embeddings.pth`` and ``--images`` photographs (scikit-image's).
2. Runs ``kdiqa convert dpiqa-official FILE --prompt-embeddings E -o DIR`` in a subprocess: wall time
   and peak RSS (``os.wait4``'s rusage of that child: ``ru_maxrss``, what ``RUSAGE_CHILDREN`` reports
   for a single child), against the file's size.
3. Runs ``kdiqa predict IMAGES --model DIR`` (512², CPU) in a subprocess: wall time and peak RSS.

Why step 1 is a child too and this process imports nothing heavy: Linux counts in a child's
``ru_maxrss`` the memory it had *before* ``exec``, i.e. a copy of its parent's address space, so a
parent holding the 4.3 GB state dict (or even torch) would inflate every figure.

The big files are deleted at the end unless ``--keep``. Nothing here is a test; the figures go to
benchmarks/README.md by hand, with the date and the machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
POOL = 1 << 24
SOURCE, EMBEDDINGS = "bench_model_plcc_best.pth", "quality_embeddings.pth"


def official_layout(seed: int = 0) -> dict[str, Any]:
    """Every key and shape of a released sd15 teacher, filled from one random pool (fast, ~1 copy of the model)."""
    import torch

    from kdiqa.released import rename
    from kdiqa.teachers.dpiqa import DPIQATeacher
    from kdiqa.teachers.dpiqa.official import NOT_IN_FILE, rules_for

    with torch.device("meta"):
        teacher = DPIQATeacher(preset="sd15")
    inverse = [(t, s) for s, t in rules_for(teacher)]
    shapes = {rename(k, inverse): tuple(v.shape) for k, v in teacher.state_dict().items() if k not in NOT_IN_FILE}
    width = teacher.config["decoder"]["width"]
    shapes.update({f"QFD.bnc1.{n}": (width,) for n in ("weight", "bias", "running_mean", "running_var")})
    shapes.update({"QFD.classifier_dist.weight": (24, teacher.config["decoder"]["mlp_hidden"]), "QFD.classifier_dist.bias": (24,)})
    gen = torch.Generator().manual_seed(seed)
    pool = torch.rand(POOL, generator=gen) * 2 - 1
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        tensor = torch.empty(shape)
        flat, start, offset = tensor.view(-1), 0, int(torch.randint(POOL, (1,), generator=gen))
        while start < flat.numel():
            take = min(flat.numel() - start, POOL - offset)
            flat[start:start + take].copy_(pool[offset:offset + take])
            start, offset = start + take, 0
        if tensor.ndim >= 2:  # He-uniform, so that the forward is not near-constant
            tensor.mul_((6.0 / tensor[0].numel()) ** 0.5)
        elif key.endswith("running_var") or (key.endswith("weight") and "norm" in key):
            tensor.mul_(0.2).add_(1.0)
        else:
            tensor.mul_(0.1)
        state[key] = tensor
    state["QFD.bnc1.num_batches_tracked"] = torch.tensor(0)
    return state


def run_child(args: list[str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in GiB, exit status) of one child process, its output to ``log``."""
    with open(log, "w") as out:
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024**2, child.returncode  # ru_maxrss is in KiB on Linux


def write_inputs(work: Path, images: int) -> None:
    """Step 1 (run as a child): the official-layout file, the prompt embeddings and the photographs."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    from kdiqa.measure import machine_context

    print("# " + "; ".join(f"{k}: {v}" for k, v in machine_context().items()))
    start = time.perf_counter()
    state = official_layout()
    params = sum(v.numel() for v in state.values())
    torch.save(state, work / SOURCE)
    gen = torch.Generator().manual_seed(1)
    torch.save(torch.nn.functional.normalize(torch.randn(1485, 768, generator=gen), dim=-1), work / EMBEDDINGS)
    (work / "images").mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket")[:images]:
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(work / "images" / f"{name}.png")
    size_gb = (work / SOURCE).stat().st_size / 1024**3
    print(f"wrote {SOURCE}: {params / 1e9:.3f}B parameters, {size_gb:.2f} GiB, in {time.perf_counter() - start:.0f} s")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/kdiqa-convert-bench")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the 4.3 GB file and the converted folder")
    parser.add_argument("--write-inputs", action="store_true", help=argparse.SUPPRESS)  # step 1, in a child
    args = parser.parse_args()

    work = Path(args.workdir)
    if args.write_inputs:
        write_inputs(work, args.images)
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    source, embeddings, out = work / SOURCE, work / EMBEDDINGS, work / "dpiqa-bench"
    wall, peak, status = run_child([sys.executable, __file__, "--write-inputs", "--workdir", str(work), "--images", str(args.images)],
                                   work / "write.log")
    print((work / "write.log").read_text().strip())
    if status:
        sys.exit(f"writing the inputs failed (exit {status}); see {work / 'write.log'}")
    size_gb = source.stat().st_size / 1024**3

    cli = [sys.executable, "-m", "kdiqa.cli.main"]
    wall, base, _ = run_child([*cli, "info", "teachers"], work / "info.log")
    print(f"baseline (`kdiqa info teachers`: imports and registries only): peak RSS {base:.2f} GiB")
    wall, peak, status = run_child(
        [*cli, "convert", "dpiqa-official", str(source), "--prompt-embeddings", str(embeddings), "-o", str(out)], work / "convert.log"
    )
    print((work / "convert.log").read_text().strip())
    if status:
        sys.exit(f"convert failed (exit {status}); see {work / 'convert.log'}")
    out_gb = (out / "model.safetensors").stat().st_size / 1024**3
    print(f"convert: wall {wall:.1f} s, peak RSS {peak:.2f} GiB = {peak / size_gb:.2f} x the {size_gb:.2f} GiB file "
          f"(model.safetensors {out_gb:.2f} GiB)")

    wall, peak, status = run_child([*cli, "predict", str(work / "images"), "--model", str(out), "--batch-size", "1"], work / "predict.log")
    print((work / "predict.log").read_text().strip())
    if status:
        sys.exit(f"predict failed (exit {status}); see {work / 'predict.log'}")
    print(f"predict ({args.images} images, 512², CPU): wall {wall:.1f} s, peak RSS {peak:.2f} GiB = {peak / size_gb:.2f} x the file")
    if not args.keep:
        shutil.rmtree(work)
        print(f"removed {work}")


if __name__ == "__main__":
    main()
