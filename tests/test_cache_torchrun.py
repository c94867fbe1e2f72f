"""Caching under torchrun or SLURM: each process writes shard RANK of WORLD_SIZE, rank 0 merges them
once all are finished, and the result equals the cache one process writes."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ToyTeacher

import kdiqa
from kdiqa.cache import CacheError, cache_info
from kdiqa.cache import layout as L
from kdiqa.cache.shards import wait_for_shards
from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.distributed import Launch, launch_from_env
from kdiqa.errors import ConfigError
from kdiqa.run import RunDir, prepare_run
from kdiqa.stages import stage_cache
from kdiqa.trainer import make_trainer

# 28 training images × 2 views = 56 views in 7 batches of 8: shard 0/2 takes 3 batches, shard 1/2 four
SETTINGS = ["cache.views_per_image=2", "cache.batch_size=8"]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS",
                    "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture
def teacher_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "teacher"
    ToyTeacher().save_pretrained(folder)
    return folder


@pytest.fixture
def no_launch(monkeypatch):
    """This test's own launch variables only (the machine running the suite may be a SLURM job), and the
    CPU in every process, so that caches compare bit for bit (forked processes inherit the patch)."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


def cache_args(recipe: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    return ["cache", str(recipe), "-o", str(out), f"teacher.checkpoint={teacher}", *SETTINGS, *extra]


def one_process_cache(recipe: Path, out: Path, teacher: Path) -> Path:
    cfg = load_recipe(recipe, [f"out={out}", f"teacher.checkpoint={teacher}", *SETTINGS])
    return Path(stage_cache(cfg, prepare_run(cfg), launch=Launch())["path"])


def read_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Every dataset and root attribute of a cache, merged or not (``meta`` as a dict)."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: (L.loads_attr(v) if k in (L.ATTR_META, L.ATTR_FINGERPRINTS) else v) for k, v in f.attrs.items()}
    return arrays, attrs


def assert_same_cache(merged: Path, single: Path, shards: int) -> None:
    got, got_attrs = read_file(merged)
    want, want_attrs = read_file(single)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), f"dataset {name} differs"
    meta = got_attrs.pop(L.ATTR_META)
    assert meta.pop("merged_from") == [L.shard_path(merged, i, shards).name for i in range(shards)]
    assert meta == want_attrs.pop(L.ATTR_META)  # rows [0, n], shard [0, 1], batch size, targets, ...
    assert sorted(got_attrs) == sorted(want_attrs)
    for key, value in want_attrs.items():
        assert np.array_equal(got_attrs[key], value), f"attribute {key} differs"
    with h5py.File(merged, "r") as f:
        assert f["features/quality_map"].is_virtual  # joined, not copied


# ----------------------------------------------------------------------------- the launch
def test_the_launch_comes_from_torchrun_else_slurm():
    assert launch_from_env({}) == Launch()
    assert launch_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(3, 4, 1, "torchrun")
    batch = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}
    assert launch_from_env(batch) == Launch()  # the batch script's (or salloc's) own shell: one process
    srun = {**batch, "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
    assert launch_from_env(srun) == Launch(5, 8, 1, "slurm")
    assert launch_from_env({**srun, "SLURM_STEP_NUM_TASKS": "6"}).world_size == 6  # `srun -n 6` in 8 tasks
    assert launch_from_env({**srun, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}).launcher == "torchrun"  # srun → torchrun
    assert launch_from_env({"RANK": "1", "WORLD_SIZE": "2"}).local_rank == 0  # one process per node (or pod)
    assert launch_from_env({"RANK": "0", "WORLD_SIZE": "1"}).distributed is False
    assert launch_from_env({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == Launch()  # Lightning's DDP launcher, not torchrun
    assert Launch(1, 2, 1).device() == (torch.device("cuda", 1 % torch.cuda.device_count()) if torch.cuda.is_available()
                                       else torch.device("cpu"))
    for env, message in [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x': expected a whole number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2: must be below WORLD_SIZE=2"),
        ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "0"}, "SLURM_NTASKS=0: must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            launch_from_env(env)


# ----------------------------------------------------------------------------- ranks, one after another
def test_ranks_wait_for_each_other_resume_and_merge_into_the_one_process_cache(tmp_path, toy_recipe, teacher_folder,
                                                                                 no_launch, capsys):
    """Run in this process one rank at a time: what each rank does when the other has failed or not yet run."""
    single = one_process_cache(toy_recipe, tmp_path / "one", teacher_folder)
    out = tmp_path / "two"
    path = out / "cache" / "teacher.h5"
    args = cache_args(toy_recipe, out, teacher_folder, "--timeout", "0.5")

    capsys.readouterr()
    no_launch.setenv("WORLD_SIZE", "2")
    no_launch.setenv("RANK", "1")
    start = time.monotonic()
    assert main(args) == 2  # shard 1 written; shard 0's process never ran: a one-line error, not a hang
    said, err = capsys.readouterr().err.strip().splitlines()  # which shard, where; then one error line
    assert said == "cache: rank 1 of 2 (torchrun, local rank 0): shard 1/2 on cpu; rank 0 joins the 2 shards when all are finished"
    assert time.monotonic() - start < 30 and err.startswith("kdiqa: error: ")
    assert f"{path}: shard 0/2 made no progress for 0.5 s (no file of it has appeared" in err
    assert "rerun the same command to resume" in err
    assert L.shard_path(path, 1, 2).exists() and not path.exists()

    no_launch.setenv("RANK", "0")
    assert main(args) == 0  # writes shard 0, finds shard 1 finished, merges
    capsys.readouterr()
    assert_same_cache(path, single, 2)

    no_launch.setenv("RANK", "1")
    assert main(args) == 0  # a rerun finds the cache finished and checks it
    assert '"written": 0' in capsys.readouterr().out
    assert cache_info(path)["complete"]

    # another number of processes would write other shards: refused at once, before any work
    (out / "cache" / "teacher.h5").unlink()
    no_launch.setenv("WORLD_SIZE", "3")
    assert main(args) == 2
    assert "shard files of a run with another number of processes lie beside it" in capsys.readouterr().err
    assert main([*args, "--shard", "0/3"]) == 2
    assert "leave --shard out" in capsys.readouterr().err


def test_a_shard_that_keeps_changing_is_waited_for_and_one_that_stops_is_not(tmp_path):
    path = tmp_path / "c.h5"
    partial = L.partial_path(L.shard_path(path, 0, 1))
    partial.write_bytes(b"started")
    stop = time.monotonic() + 1.2

    def writer() -> None:  # a live process: its shard's file keeps changing, then it dies
        while time.monotonic() < stop:
            with partial.open("ab") as f:
                f.write(b"row")
            time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    start = time.monotonic()
    with pytest.raises(CacheError, match=r"shard 0/1 made no progress for 0.4 s \(c.h5.shard-0-of-1.h5.partial stopped changing"):
        wait_for_shards(path, 1, {"teacher": "x"}, timeout=0.4)
    thread.join()
    assert time.monotonic() - start > 1.2  # waited while it changed, gave up soon after it stopped


def run_rank(rank: int, args: list[str]) -> None:
    """Body of a forked process: the CLI with the launch variables torchrun would set."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os._exit(main(args))  # skip pytest's exit handlers, inherited through fork


def test_two_processes_at_once_write_the_one_process_cache(tmp_path, toy_recipe, teacher_folder, no_launch):
    """Both ranks at the same time (forked, as torchrun's processes but without re-importing torch)."""
    single = one_process_cache(toy_recipe, tmp_path / "one", teacher_folder)
    out = tmp_path / "two"
    args = cache_args(toy_recipe, out, teacher_folder, "--timeout", "60")
    procs = [mp.get_context("fork").Process(target=run_rank, args=(rank, args)) for rank in (1, 0)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0  # rank 1 too returns only once rank 0 has merged
    assert_same_cache(out / "cache" / "teacher.h5", single, 2)


# ----------------------------------------------------------------------------- distillation across nodes
def test_distillation_on_several_nodes_is_lightnings(toy_recipe, tmp_path, no_launch):
    """trainer.num_nodes and trainer.devices reach Lightning's Trainer (DDP over nodes × devices processes)."""
    cfg = load_recipe(toy_recipe, ["trainer.num_nodes=2", "trainer.devices=2", "trainer.strategy=ddp"])
    trainer, _ = make_trainer(cfg.trainer, RunDir(tmp_path / "run"), "distill", "val/srcc")
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 2, 4)
    with pytest.raises(ConfigError, match="trainer.num_nodes: must be > 0, got 0"):
        load_recipe(toy_recipe, ["trainer.num_nodes=0"])


# ----------------------------------------------------------------------------- torchrun itself
@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_one_process_cache(tmp_path, toy_recipe, teacher_folder, no_launch):
    """The real launcher: ``python -m torch.distributed.run --nproc-per-node 2 kdiqa cache RECIPE`` (CPU)."""
    single = one_process_cache(toy_recipe, tmp_path / "one", teacher_folder)
    launcher = tmp_path / "kdiqa_with_toy.py"  # kdiqa's CLI, with the tests' toy teacher registered
    launcher.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import conftest  # registers the toy teacher
        from kdiqa.cli.main import main
        sys.exit(main(sys.argv[1:]))
    """))
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(Path(kdiqa.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(launcher),
               *cache_args(toy_recipe, out, teacher_folder, "--timeout", "120")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"merged"') == 2  # both ranks returned after the merge
    assert_same_cache(out / "cache" / "teacher.h5", single, 2)
