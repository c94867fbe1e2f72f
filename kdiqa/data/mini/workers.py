"""Build the mini dataset and its pool in worker processes: jobs in order, results in order.

Why: the quickstart's data stage makes 8,400 images, one at a time on one core by default — a
dead-leaves image costs 8 ms — while the other core waits. Each image draws from its own seeded
generator, so the images do not depend on which process makes them, and a build is byte-identical
whatever the number of workers. Processes, not threads: the work is numpy and PIL in small pieces,
and the interpreter lock would serialise most of it.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

CHUNK = 256  # images per job: the unit of work of a worker process and of the progress bar
# Below this many images a build takes about as long as starting the processes (~2 s: each imports torch).
MIN_PARALLEL_IMAGES = 1024


def default_workers(n_images: int) -> int:
    """Worker processes for a build of ``n_images``: one per core this process may use; 0 (in this
    process) for small builds or a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if n_images < MIN_PARALLEL_IMAGES or cores < 2 else cores


def one_thread() -> None:
    """One torch thread: the label batches are small, and OpenMP barriers on cores shared with other
    processes stall badly (measured 8x slower with 2 threads under load). Parallelism = workers."""
    torch.set_num_threads(1)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], counts: Sequence[int], workers: int | None,
             desc: str, progress: bool) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in ``workers`` processes (None: :func:`default_workers`), with a
    progress bar ``desc`` advanced by ``counts[i]`` images as job ``i`` finishes (in order)."""
    total = sum(counts)
    workers = default_workers(total) if workers is None else workers
    with tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if progress else True) as bar:
        if workers <= 0 or len(jobs) < 2:
            threads = torch.get_num_threads()
            one_thread()
            try:
                results = []
                for job, count in zip(jobs, counts, strict=True):
                    results.append(fn(*job))
                    bar.update(count)
                return results
            finally:
                torch.set_num_threads(threads)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=one_thread) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            results = []
            for fut, count in zip(futures, counts, strict=True):
                results.append(fut.result())
                bar.update(count)
            return results
