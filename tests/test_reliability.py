"""Faults a user meets, injected: SIGKILL at random points of `kdiqa cache` and `kdiqa distill`, a full
disk, a read-only or impossible output path, a damaged checkpoint, a stale cache, and a list of bad
inputs. Each must end in the uninterrupted result (after a rerun) or in one line, exit 2, with
nothing incomplete at a final path; none may crash the process.

Runs in about half a minute on 2 cores. ``KDIQA_FAULT_SEEDS`` sets the number of random kill
trials per stage (default 3); with ``KDIQA_FAULT_REPORT=path`` every trial is recorded there as
JSON, which ``benchmarks/faults.py`` turns into the README's figures. The full-disk cases need a
small tmpfs (``mount``, as root): skipped where that is not allowed; a file-size limit
(``RLIMIT_FSIZE``) stands in for a full disk everywhere.
"""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import ToyTeacher, make_blur_dataset
from PIL import Image
from test_cache import assert_same_arrays, build, child_build, make_samples

import kdiqa.cli.commands  # noqa: F401 - what the CLI imports lazily: imported here, every forked child starts with it
from kdiqa.cli.main import main

SEEDS = list(range(int(os.environ.get("KDIQA_FAULT_SEEDS", "3"))))
TRIALS: Counter[str] = Counter()  # "<kind> run" / "<kind> passed", for benchmarks/faults.py


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    out = os.environ.get("KDIQA_FAULT_REPORT")
    if out:
        Path(out).write_text(json.dumps(dict(TRIALS), indent=2, sort_keys=True) + "\n")


@contextmanager
def trial(kind: str) -> Iterator[None]:
    """Count one trial of ``kind``; it passed if the block ran without a failed assertion."""
    TRIALS[f"{kind} run"] += 1
    yield
    TRIALS[f"{kind} passed"] += 1


# ------------------------------------------------------------------------------------ processes
def _cli_child(args: list[str], log: Path, fsize: int | None) -> None:
    os.setpgid(0, 0)  # its own process group: a kill takes its data-loading workers with it
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # not pytest's capture objects
    if fsize is not None:  # a file-size limit: writes past it fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    torch.set_num_threads(1)
    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_cli(args: list[str], log: Path, fsize: int | None = None) -> mp.process.BaseProcess:
    """``kdiqa ARGS`` in a forked process (no second torch import), its output in ``log``."""
    proc = mp.get_context("fork").Process(target=_cli_child, args=(args, log, fsize), daemon=False)
    proc.start()
    return proc


def run_cli(args: list[str], log: Path, fsize: int | None = None, timeout: float = 120) -> tuple[int, str]:
    """Exit status (negative: the signal that ended it) and output of ``kdiqa ARGS`` in a child process."""
    proc = start_cli(args, log, fsize)
    proc.join(timeout)
    assert proc.exitcode is not None, f"kdiqa {' '.join(args)} did not finish in {timeout} s"
    return proc.exitcode, log.read_text()


def kill(proc: mp.process.BaseProcess, kind: str | None = None) -> None:
    """SIGKILL the child and its workers (its process group; the child itself if it has none yet).

    With ``kind``, a kill that hit a live process is counted as ``<kind> kills``.
    """
    if kind and proc.is_alive():
        TRIALS[f"{kind} kills"] += 1
    for send in (lambda: os.killpg(proc.pid, signal.SIGKILL), lambda: os.kill(proc.pid, signal.SIGKILL)):
        try:
            send()
        except ProcessLookupError:
            continue
        break
    proc.join()


def wait_for_saves(proc: mp.process.BaseProcess, path: Path, saves: int, timeout: float = 120) -> None:
    """Return once ``path`` has been (re)written ``saves`` times by ``proc`` (or ``proc`` has ended)."""
    seen, last, deadline = 0, None, time.monotonic() + timeout
    while seen < saves and proc.is_alive() and time.monotonic() < deadline:
        try:
            stamp = path.stat().st_mtime_ns, path.stat().st_ino
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.002)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("kdiqa: error:")]


def assert_one_line_error(code: int, output: str, *fragments: str) -> str:
    """Exit 2, exactly one error line containing every fragment, no traceback (and no crash)."""
    assert code == 2, f"exit {code}:\n{output}"
    lines = errors(output)
    assert len(lines) == 1 and "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------- the world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """A 30-image dataset, a toy teacher, a recipe, its cache and an uninterrupted distillation."""
    root = tmp_path_factory.mktemp("faults")
    make_blur_dataset(root / "blur", n=30, size=24)
    torch.manual_seed(0)
    ToyTeacher().save_pretrained(root / "teacher")
    torch.manual_seed(1)
    ToyTeacher().save_pretrained(root / "other-teacher")  # same config, other weights
    recipe = root / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: faults
        out: {root / "default-run"}
        data: {{name: csv, root: {root / "blur"}, options: {{mos_range: [0, 1]}}, batch_size: 6, eval_batch_size: 16}}
        views: {{size: 24, train_scale: [0.6, 1.0]}}
        trainer: {{max_epochs: 4, logger: csv, log_every_n_steps: 2, progress_bar: false, accelerator: cpu, devices: 1}}
        teacher: {{name: toy, checkpoint: {root / "teacher"}}}
        student: {{options: {{backbone: kdiqa_cnn_tiny}}}}
        cache: {{views_per_image: 2, batch_size: 8}}
        distill: {{features: [{{target: quality_map, tap: -1, kind: conv, loss: mse, weight: 1.0}}]}}
    """))
    ref = root / "reference"
    code, out = run_cli(["cache", str(recipe), "-o", str(ref)], root / "cache.log")
    assert code == 0, out
    code, out = run_cli(["distill", str(recipe), "-o", str(ref)], root / "distill.log")
    assert code == 0, out
    return {"root": root, "recipe": str(recipe), "ref": ref, "cache": ref / "cache" / "teacher.h5"}


def distill_args(world: dict[str, Any], out: Path, *extra: str) -> list[str]:
    return ["distill", world["recipe"], "-o", str(out), f"cache.path={world['cache']}", *extra]


RESULTS = ("students/kd/model.safetensors", "logs/student_kd/metrics.csv")


def assert_same_result(run: Path, ref: Path) -> None:
    """Weights and the whole metrics history byte for byte, and the same test metrics."""
    for name in RESULTS:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs from the uninterrupted run"
    test = [json.loads((d / "metrics.json").read_text())["student_kd"]["test"] for d in (run, ref)]
    assert test[0] == test[1]


def assert_no_torn_files(folder: Path, temporaries: bool = True) -> None:
    """Every checkpoint and cache at a final path reads; no temporary file outlives its writer."""
    for ckpt in folder.rglob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    for h5 in folder.rglob("*.h5"):
        with h5py.File(h5, "r", locking=False) as f:
            assert f.attrs["complete"] == 1
    if temporaries:
        leftovers = list(folder.rglob(".*.tmp"))
        assert not leftovers, leftovers


# ------------------------------------------------------------------------------ SIGKILL: cache
@pytest.mark.parametrize("seed", SEEDS)
def test_cache_killed_at_random_points_resumes_to_the_uninterrupted_file(tmp_path, seed):
    images = tmp_path / "images"
    samples = make_samples(images, 12)
    clean = tmp_path / "clean.h5"
    build(clean, samples, batch_size=2)
    path = tmp_path / "c.h5"
    args = {"images": str(images), "n": 12, "path": str(path), "sleep": 0.02, "overrides": {"batch_size": 2}}
    rng = random.Random(seed)
    with trial("kill cache"):
        for _ in range(2):  # killed twice at random instants, then left to finish
            proc = mp.get_context("fork").Process(target=child_build, args=(args,))
            proc.start()
            proc.join(rng.uniform(0.0, 0.5))
            kill(proc, "kill cache")
            assert_no_torn_files(tmp_path, temporaries=False)  # a killed writer may leave its .tmp
        build(path, samples, batch_size=2)
        assert_same_arrays(clean, path)
        assert not path.with_name("c.h5.partial").exists() and not list(tmp_path.glob(".c.h5*.tmp"))


# ---------------------------------------------------------------------------- SIGKILL: distill
def pool_reference(world: dict[str, Any]) -> tuple[list[str], Path]:
    """Settings and uninterrupted run of the harder variant: an unlabelled pool mixed into every batch
    at a fixed share (an epoch-dependent sampler) and a data-loading worker (its own random state)."""
    if "pool" not in world:
        root = world["root"]
        (root / "pool").mkdir()
        rng = np.random.default_rng(7)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "pool" / f"p{i}.png")
        settings = [f"data.unlabelled.folder={root / 'pool'}", "distill.unlabelled_fraction=0.5", "data.num_workers=1"]
        ref = root / "reference-pool"
        assert run_cli(["cache", world["recipe"], "-o", str(ref), *settings], root / "pool-cache.log")[0] == 0
        settings.append(f"cache.path={ref / 'cache' / 'teacher.h5'}")
        assert run_cli(["distill", world["recipe"], "-o", str(ref), *settings], root / "pool-distill.log")[0] == 0
        world["pool"] = (settings, ref)
    return world["pool"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_distill_killed_at_random_points_ends_as_the_uninterrupted_run(world, tmp_path, seed):
    """Same weights and the same metrics.csv, every epoch kept, whatever instant the kills hit.

    Odd seeds distil with an unlabelled pool and a data-loading worker (:func:`pool_reference`).
    """
    rng = random.Random(seed)
    settings, ref = pool_reference(world) if seed % 2 else ([f"cache.path={world['cache']}"], world["ref"])
    args = ["distill", world["recipe"], "-o", str(tmp_path / "run"), *settings]
    run = tmp_path / "run"
    with trial("kill distill"):
        for k in range(2):  # a random instant: after 0-4 checkpoint writes (of 5), plus up to ~1 epoch
            proc = start_cli(args, tmp_path / f"killed{k}.log")
            wait_for_saves(proc, run / "checkpoints" / "student_kd" / "latest.ckpt", rng.randint(0, 4))
            time.sleep(rng.uniform(0.0, 0.08))
            kill(proc, "kill distill")
        code, out = run_cli(args, tmp_path / "final.log")
        assert code == 0, out
        assert_same_result(run, ref)
        assert_no_torn_files(run)


# -------------------------------------------------------------------------------- full disk
@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs is not allowed here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def test_a_full_disk_while_caching_is_one_line_then_a_rerun_finishes_the_cache(world, tmp_path):
    with tmpfs(tmp_path / "disk", "16k") as disk, trial("disk full"):
        code, out = run_cli(["cache", world["recipe"], "-o", str(disk / "run")], tmp_path / "full.log")
        assert_one_line_error(code, out, "cannot write the teacher cache", "No space left on device")
        assert not (disk / "run" / "cache" / "teacher.h5").exists()
        grow(disk, "4m")
        code, out = run_cli(["cache", world["recipe"], "-o", str(disk / "run")], tmp_path / "rerun.log")
        assert code == 0, out
        assert_same_arrays(world["cache"], disk / "run" / "cache" / "teacher.h5")
        assert_no_torn_files(disk)


def test_a_full_disk_while_distilling_is_one_line_then_a_rerun_ends_as_the_uninterrupted_run(world, tmp_path):
    """The disk fills up at a checkpoint write, mid-training: nothing torn is left, and the rerun
    resumes from the last good checkpoint to the very result of an uninterrupted run."""
    with tmpfs(tmp_path / "disk", "2600k") as disk, trial("disk full"):
        code, out = run_cli(distill_args(world, disk / "run"), tmp_path / "full.log")
        assert_one_line_error(code, out, "cannot write", "No space left on device")
        assert_no_torn_files(disk)
        grow(disk, "16m")
        code, out = run_cli(distill_args(world, disk / "run"), tmp_path / "rerun.log")
        assert code == 0, out
        assert_same_result(disk / "run", world["ref"])


def test_a_full_disk_for_predictions_is_one_line(world, tmp_path):
    with tmpfs(tmp_path / "disk", "4k") as disk, trial("disk full"):
        (disk / "filler").write_bytes(b"x" * 4096)
        args = ["predict", str(world["root"] / "blur" / "imgs"), "--model", str(world["ref"] / "students" / "kd"),
                "--output", str(disk / "scores.csv")]
        assert_one_line_error(*run_cli(args, tmp_path / "log"), "cannot write the predictions", "No space left")
        assert not (disk / "scores.csv").exists()


@pytest.mark.parametrize("stage", ["cache", "distill"])
def test_a_file_size_limit_is_one_line_and_never_a_crash(world, tmp_path, stage):
    """RLIMIT_FSIZE makes writes fail (EFBIG) as a full disk does, on any machine: HDF5 and Lightning
    must fail in one line, not crash (the full-disk segfault came from HDF5 after a failed write)."""
    with trial("file-size limit"):
        args = ["cache", world["recipe"], "-o", str(tmp_path / "run")] if stage == "cache" else distill_args(world, tmp_path / "run")
        code, out = run_cli(args, tmp_path / "log", fsize=16 * 1024)
        assert_one_line_error(code, out, "cannot write", "File too large")
        assert_no_torn_files(tmp_path / "run")


# ------------------------------------------------------------------------ read-only, impossible
@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A folder this process cannot write into: a read-only tmpfs as root, else a chmod 555 folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("root ignores file modes, and mounting a read-only tmpfs is not allowed here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("what", ["cache", "distill", "predict"])
def test_a_read_only_output_folder_is_one_line(world, read_only, tmp_path, what):
    args = {
        "cache": ["cache", world["recipe"], "-o", str(read_only / "run")],
        "distill": distill_args(world, read_only / "run"),
        "predict": ["predict", str(world["root"] / "blur" / "imgs"), "--model", str(world["ref"] / "students" / "kd"),
                    "--output", str(read_only / "scores.csv")],
    }[what]
    with trial("read-only"):
        line = assert_one_line_error(*run_cli(args, tmp_path / "log"), str(read_only))
        assert os.strerror(errno.EROFS) in line or os.strerror(errno.EACCES) in line
        assert not any(read_only.iterdir())


@pytest.mark.parametrize("target", ["/proc/kdiqa-scores.csv", "/proc/no/such/folder/scores.csv", "/dev/null/scores.csv"])
def test_an_impossible_output_path_is_one_line(world, tmp_path, target):
    args = ["predict", str(world["root"] / "blur" / "imgs"), "--model", str(world["ref"] / "students" / "kd"), "--output", target]
    with trial("impossible path"):
        assert_one_line_error(*run_cli(args, tmp_path / "log"), target, "cannot write the predictions")


# ----------------------------------------------------------------------- a damaged checkpoint
def test_a_corrupt_latest_checkpoint_is_one_line_naming_it(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["ref"] / "checkpoints", run / "checkpoints")
    latest = run / "checkpoints" / "student_kd" / "latest.ckpt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # torn, as an older kdiqa could leave it
    with trial("corrupt checkpoint"):
        line = assert_one_line_error(*run_cli(distill_args(world, run), tmp_path / "log"), str(latest), "delete it")
        assert "cannot read this training checkpoint" in line
        latest.unlink()
        shutil.rmtree(run / "checkpoints")
        code, out = run_cli(distill_args(world, run), tmp_path / "rerun.log")
        assert code == 0, out
        assert_same_result(run, world["ref"])


# ---------------------------------------------------------------------------------- bad inputs
def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def _bad_inputs() -> list[tuple[str, Callable[[dict[str, Any], Path], list[str]], str]]:
    """(name, arguments given the world and a scratch folder, fragment of the one error line)."""
    def recipe(w, d):
        return w["recipe"]

    def distill(*extra):
        return lambda w, d: distill_args(w, d / "run", *extra)

    def csv_recipe(csv_text):
        def make(w, d):
            _write(d / "data" / "labels.csv", csv_text)
            shutil.copy(w["root"] / "blur" / "imgs" / "000.png", d / "data" / "a.png")
            return ["data", "info", _write(d / "r.yaml", f"data: {{name: csv, root: {d / 'data'}, options: {{mos_range: [0, 1]}}}}\n")]
        return make

    def stale_cache(w, d):
        shutil.copytree(w["ref"] / "cache", d / "run" / "cache")
        return ["cache", w["recipe"], "-o", str(d / "run"), "views.size=20"]

    def shorter_run(w, d):
        shutil.copytree(w["ref"] / "checkpoints", d / "run" / "checkpoints")
        return distill_args(w, d / "run", "trainer.max_epochs=2")

    def corrupt_images(w, d):
        (d / "imgs").mkdir()
        for name in ("a.png", "b.jpg"):
            (d / "imgs" / name).write_bytes(b"\x89PNG not really")
        return ["predict", str(d / "imgs"), "--model", str(w["ref"] / "students" / "kd"), "--output", str(d / "s.csv")]

    return [
        # stale caches: every reader refuses them, naming the fingerprint (kdiqa cache does too)
        ("cache of another teacher", lambda w, d: distill_args(w, d / "run", f"teacher.checkpoint={w['root'] / 'other-teacher'}"),
         "teacher fingerprint differs"),
        ("cache at another view size", distill("views.size=20"), "views fingerprint differs"),
        ("cache with other views per image", distill("cache.views_per_image=3"), "views fingerprint differs"),
        ("cache in another precision", distill("cache.dtype=float32"), "targets fingerprint differs"),
        ("cache with other features", distill("cache.pool={quality_map: 2}"), "targets fingerprint differs"),
        ("cache of another dataset", distill("data.options.mos_range=[0,2]"), "dataset fingerprint differs"),
        ("kdiqa cache on a stale cache", stale_cache, "views fingerprint differs"),
        # recipes and overrides
        ("unknown key", lambda w, d: ["data", "info", recipe(w, d), "trainer.max_epoch=1"], "unknown key 'trainer.max_epoch'"),
        ("wrong type", lambda w, d: ["data", "info", recipe(w, d), "trainer.max_epochs=many"], "trainer.max_epochs"),
        ("precision", lambda w, d: ["distill", recipe(w, d), "-o", str(d / "run"), "trainer.precision=99"], "trainer.precision: '99'"),
        ("stage precision", lambda w, d: ["data", "info", recipe(w, d), "distill.fit.trainer={precision: 99}"],
         "distill.fit.trainer.precision"),
        ("unfilled ???", lambda w, d: ["run", "dpiqa/released_koniq10k", f"data.root={d}", "-o", str(d / "run")],
         "missing required value 'teacher.checkpoint'"),
        ("unfilled ??? data.root", lambda w, d: ["data", "info", "dpiqa/released_koniq10k"], "missing required value 'data.root'"),
        ("removing a missing key", lambda w, d: ["data", "info", recipe(w, d), "~data.options.nope"], "no key 'data.options.nope'"),
        ("malformed override", lambda w, d: ["data", "info", recipe(w, d), "trainer.max_epochs"], "expected key=value"),
        ("missing recipe", lambda w, d: ["data", "info", str(d / "nope.yaml")], "not found"),
        ("yaml syntax", lambda w, d: ["data", "info", _write(d / "r.yaml", "data: {name: csv\n")], "not valid YAML"),
        ("unknown dataset", lambda w, d: ["data", "info", recipe(w, d), "data.name=konik10k"], "did you mean 'koniq10k'"),
        ("missing data folder", lambda w, d: ["data", "info", recipe(w, d), f"data.root={d / 'nowhere'}"], "nowhere"),
        ("unknown stage", lambda w, d: ["run", recipe(w, d), "stages=[dat]", "-o", str(d / "run")], "did you mean 'data'"),
        ("max_epochs below a finished run's", shorter_run, "delete that file"),
        # data files
        ("header-only CSV", csv_recipe("path,mos\n"), "labels.csv: has a header row but no data rows"),
        ("CSV without mos", csv_recipe("path,score\na.png,0.5\n"), "missing column 'mos'"),
        ("CSV with a bad MOS", csv_recipe("path,mos\na.png,high\n"), "row 2: column 'mos'"),
        ("CSV naming a missing image", csv_recipe("path,mos\ngone.png,0.5\n"), "image 'gone.png' not found"),
        # prediction, caches, models
        ("every image unreadable", corrupt_images, "none of the 2 images could be scored"),
        ("no images at all", lambda w, d: ["predict", str(d), "--model", str(w["ref"] / "students" / "kd")], "no images found"),
        ("no model", lambda w, d: ["predict", str(d), "--model", str(d / "nothing")], "no saved model here"),
        ("merge without shards", lambda w, d: ["cache", "merge", str(d / "c.h5")], "no shard files"),
        ("info of a non-cache", lambda w, d: ["cache", "info", _write(d / "x.h5", "not hdf5")], "cannot read cache file"),
        ("no cache yet", lambda w, d: ["distill", recipe(w, d), "-o", str(d / "run")], "kdiqa cache"),
    ]


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("name,args,fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_a_bad_input_is_one_line_exit_2(world, tmp_path, name, args, fragment):
    with trial("bad input"):
        code, out = run_cli(args(world, tmp_path), tmp_path / "cli.log")
        assert_one_line_error(code, out, fragment)


def test_the_empty_split_and_the_cache_overrides_after_options_work(world, tmp_path):
    """Formerly a traceback and a refusal; both are ordinary commands."""
    with trial("bad input"):
        code, out = run_cli(["data", "info", world["recipe"], "data.split.ratios=[1.0,0.0,0.0]", "data.split.policy=random"],
                            tmp_path / "info.log")
        assert code == 0 and "val" in out, out
        code, out = run_cli(["cache", world["recipe"], "-o", str(tmp_path / "run"), "cache.views_per_image=1"], tmp_path / "c.log")
        assert code == 0, out
        with h5py.File(tmp_path / "run" / "cache" / "teacher.h5", "r", locking=False) as f:
            assert json.loads(f.attrs["meta"])["views_per_image"] == 1


def test_np_random_state_round_trips_through_a_weights_only_checkpoint():
    """The random state travels in checkpoints loaded with ``weights_only=True``: plain data only."""
    from kdiqa.checkpoints import capture_rng, restore_rng

    state = capture_rng()
    path_state = torch.load(_save(state), weights_only=True)
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(path_state)
    assert torch.equal(torch.rand(3), first[0]) and np.array_equal(np.random.rand(3), first[1]) and random.random() == first[2]


def _save(obj: Any) -> Any:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


# --------------------------------------------------------------------------------- leftovers
def test_leftovers_of_killed_writes_are_removed_by_the_next_write(tmp_path, monkeypatch):
    import kdiqa.cache.partial as partial_file
    from kdiqa.io import _HOST, write_json

    with trial("leftovers"):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # a pid whose process is over
        dead = tmp_path / f".m.json.{_HOST}-{gone.pid}.abc123.tmp"
        live = tmp_path / f".m.json.{_HOST}-{os.getpid()}.def456.tmp"  # a writer still at work
        for tmp in (dead, live):
            tmp.write_text("half a file")
        write_json(tmp_path / "m.json", {"a": 1})
        assert not dead.exists() and live.exists()
        assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}

        # a compressed cache is finished, then its uncompressed source deleted: killed in between,
        # the source stayed beside the cache forever; the next run removes it
        samples = make_samples(tmp_path / "images", 6)
        path = tmp_path / "c.h5"
        monkeypatch.setattr(partial_file, "finish", lambda source, target, compression: partial_file._repack(source, target, compression))
        build(path, samples, compression="gzip")
        monkeypatch.undo()
        assert path.with_name("c.h5.partial").exists()
        assert build(path, samples, compression="gzip")["written"] == 0
        assert not path.with_name("c.h5.partial").exists()
