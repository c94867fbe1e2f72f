"""Survey: which pyiqa no-reference metrics build and score offline as kdiqa teachers, and which need files.

    python benchmarks/pyiqa_offline.py [--hub-dir EMPTY_FOLDER] [--metrics topiq_nr,musiq]

Needs pyiqa (``pip install 'kdiqa[pyiqa]'``). Every metric is built twice through ``teacher.name:
pyiqa`` with the network blocked (a test guard below kdiqa's own): first as pyiqa configures it (its
released weights), then with every ``*pretrain*`` switch of its architecture off (random weights: what
needs no file at all). Each line says ``builds and scores offline`` (a forward on two 224² views ran), or
the first file kdiqa stopped at (its own one-line error, shortened), or why it could not be tried here
(a dependency of pyiqa's missing). ``--hub-dir`` should be an empty folder, so nothing cached is found.
"""
from __future__ import annotations

import argparse
import inspect
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _refuse(*args, **kwargs):
    raise AssertionError(f"the network was reached past kdiqa's guard: {args!r}")


def off_switches(pyiqa_configs: dict, name: str) -> dict:
    """The metric's architecture options whose name says pretrain, turned off (None for a dataset key)."""
    from pyiqa.utils.registry import ARCH_REGISTRY

    cls = ARCH_REGISTRY.get(pyiqa_configs[name]["metric_opts"]["type"])
    return {p: (None if isinstance(v.default, str) else False) for p, v in inspect.signature(cls.__init__).parameters.items()
            if "pretrain" in p and p != "pretrained_model_path"}


def attempt(name: str, hub: str, options: dict) -> str:
    from kdiqa.errors import KdiqaError
    from kdiqa.measure import count_parameters
    from kdiqa.registry import TEACHERS
    from kdiqa.teachers.external import MissingFileError

    start = time.perf_counter()
    try:
        teacher = TEACHERS.build("pyiqa", metric=name, hub_dir=hub, metric_options=options)
        with torch.no_grad():
            teacher(torch.rand(2, 3, 224, 224))
        params = count_parameters(teacher) / 1e6
        return f"builds and scores offline ({params:.1f} M parameters, {time.perf_counter() - start:.1f} s)"
    except MissingFileError as exc:
        text = str(exc).split(" and kdiqa never downloads")[0].replace(f"pyiqa metric {name!r} ", "")
        return text.split(" (http")[0]
    except KdiqaError as exc:
        return f"not built: {str(exc)[:110]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub-dir", help="an empty folder (default: a new temporary one)")
    parser.add_argument("--metrics", help="comma-separated metric names (default: every NR metric)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    socket.socket.connect = lambda self, address: _refuse(address)  # below kdiqa's guard: must never run
    try:
        import pyiqa
        from pyiqa.default_model_configs import DEFAULT_CONFIGS
    except ImportError as exc:
        print(f"pyiqa_offline: pyiqa is needed ({exc}); pip install 'kdiqa[pyiqa]'", file=sys.stderr)
        return 2
    hub = args.hub_dir or tempfile.mkdtemp(prefix="empty-hub-")
    names = args.metrics.split(",") if args.metrics else pyiqa.list_models(metric_mode="NR")
    print(f"# pyiqa {pyiqa.__version__}, torch {torch.__version__}, hub folder {hub} (empty), network blocked")
    print(f"{'metric':<22}{'as released':<60}random weights (pretrain switches off)")
    for name in names:
        released = attempt(name, hub, {})
        try:
            switches = off_switches(DEFAULT_CONFIGS, name)
        except Exception as exc:  # noqa: BLE001 - an architecture whose module cannot import here
            random = f"not tried: {type(exc).__name__}"
        else:
            random = "(same)" if released.startswith("builds") else f"{attempt(name, hub, switches)} with {switches}"
        print(f"{name:<22}{released[:58]:<60}{random}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
