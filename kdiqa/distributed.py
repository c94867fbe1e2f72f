"""Which process of a multi-process launch this one is: torchrun's variables, else SLURM's.

``kdiqa cache`` started N times by ``torchrun --nproc-per-node N`` (or ``srun --ntasks N``) writes
shard ``RANK`` of ``WORLD_SIZE`` on device ``LOCAL_RANK`` (:mod:`kdiqa.stages.cache`). Nothing here
joins a process group: the cache's processes meet through the shard files they write
(:func:`kdiqa.cache.shards.wait_for_shards` says why), and distillation's processes are Lightning's,
which reads these variables its own way.

Which variables: torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` when ``RANK`` and
``WORLD_SIZE`` are set (Lightning's own DDP launcher sets ``WORLD_SIZE`` and ``LOCAL_RANK`` but no
``RANK`` while it trains: that is not a launch of ``kdiqa cache``). Else, in a task of an ``srun``
step (``SLURM_STEP_ID`` set), SLURM's ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (the step's tasks;
``SLURM_NTASKS`` if absent) and ``SLURM_LOCALID``. A batch script's own shell, or an ``salloc``
shell, also carries ``SLURM_NTASKS`` and ``SLURM_PROCID=0`` but is one process, not N: without the
step check, ``kdiqa cache`` run there would write shard 0 of N and wait for N - 1 processes that
were never started.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kdiqa.errors import ConfigError

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """This process's place in its launch: ``launcher`` is ``torchrun``, ``slurm`` or ``none``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

        The index wraps around the visible devices: ``srun --gpus-per-task 1`` shows each task only
        its own GPU (as ``cuda:0``), while torchrun shows every process all of the node's GPUs.
        """
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank % torch.cuda.device_count())

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.launcher}, local rank {self.local_rank})"


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """The launch the environment describes; a plain ``Launch()`` (one process) when none does.

    A variable that is set but not a valid number is a one-line :class:`ConfigError` naming it.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank_var, size_var, local_var, launcher = *TORCHRUN, "torchrun"
    elif "SLURM_STEP_ID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        rank_var, local_var, launcher = "SLURM_PROCID", "SLURM_LOCALID", "slurm"
    else:
        return Launch()
    size = _number(env, size_var, minimum=1)
    rank = _number(env, rank_var, minimum=0)
    local = _number(env, local_var, minimum=0)
    if rank >= size:
        raise ConfigError(f"{rank_var}={rank}: must be below {size_var}={size}")
    return Launch(rank, size, local, launcher)


def _number(env: Mapping[str, str], name: str, minimum: int) -> int:
    """The variable's value; 0 when it is not set (LOCAL_RANK with one process per node or pod)."""
    text = env.get(name)
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value}: must be at least {minimum}")
    return value
