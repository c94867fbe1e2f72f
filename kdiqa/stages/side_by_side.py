"""Stages side by side: ``distill+baseline`` in a stage list runs both at once, one process each.

Why: the two students of a comparison are independent — each reads the data and the cache, and writes
only its own checkpoints, logs, student and predictions — and on a CPU small models gain little from a
second thread (the quickstart's KD student: 1.45x with two threads instead of one), so two
one-thread processes on two cores finish both students in about the time of one. Each process trains
exactly as the stage would alone (:func:`kdiqa.run.seed_stage` reseeds every stage), so the results are
the same; only the progress lines interleave (each names its stage). ``metrics.json``, which every
stage updates, is written under a lock (:meth:`kdiqa.run.RunDir.update_metrics`).

A failure in one process stops the others and is raised here as if the stage had run in this process:
a user error is still one line and exit 2.
"""
from __future__ import annotations

import multiprocessing
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from kdiqa.config import Recipe
from kdiqa.console import force_plain_progress, setup_console
from kdiqa.errors import ConfigError, KdiqaError
from kdiqa.run import RunDir, use_recipe_threads
from kdiqa.trainer import merge_trainer

# Stages that only read what earlier stages wrote and write only their own outputs, so that any of
# them may run beside another: the students' fits and the evaluation of the teacher.
INDEPENDENT = ("eval", "distill", "baseline")
SEPARATOR = "+"


def check_group(names: list[str], recipe: Recipe | None = None) -> None:
    """A group of stages to run side by side: two or more different independent stages, one device each."""
    entry = SEPARATOR.join(names)
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: {entry!r} names a stage twice")
    others = [n for n in names if n not in INDEPENDENT]
    if others:
        raise ConfigError(f"stages: {entry!r}: {others[0]!r} cannot run side by side with another stage "
                          f"(only {', '.join(INDEPENDENT)} can: they read earlier stages' outputs, never each other's)")
    if recipe is None:
        return
    students = merge_trainer(recipe.trainer, recipe.distill.fit.trainer)  # what distill and baseline train with
    if students.devices not in (1, "1") or students.num_nodes != 1:
        raise ConfigError(f"stages: {entry!r} runs one process per stage, each on one device; it needs "
                          f"trainer.devices: 1 and trainer.num_nodes: 1 (got {students.devices}, "
                          f"{students.num_nodes}): list the stages one after the other instead")


def run_side_by_side(stages: dict[str, Callable[..., dict[str, Any]]], recipe: Recipe, run: RunDir,
                     verbose: bool = False) -> list[dict[str, Any]]:
    """Run the stages (name → stage function) at once, one process each; their results in the same order."""
    names = list(stages)
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    started: list[tuple[str, Any, Connection]] = []
    try:
        for name in names:
            receive, send = ctx.Pipe(duplex=False)
            args = (name, stages[name], recipe, run, verbose, multiprocessing.get_start_method(), send)
            process = ctx.Process(target=_stage_process, args=args, name=f"kdiqa {name}")
            process.start()
            send.close()  # this process only receives: the pipe ends when the child's end closes
            started.append((name, process, receive))
        results: dict[str, dict[str, Any]] = {}
        waiting = {receive: (name, process) for name, process, receive in started}
        while waiting:
            for receive in wait(list(waiting)):
                name, process = waiting.pop(receive)  # type: ignore[index]
                results[name] = _outcome(name, receive, process)
        return [results[name] for name in names]
    finally:
        for _, process, receive in started:  # after a failure or Ctrl-C: stop the stages still running
            if process.is_alive():
                process.terminate()
            process.join()
            receive.close()


def _outcome(name: str, receive: Connection, process: Any) -> dict[str, Any]:
    try:
        ok, value = receive.recv()
    except EOFError:  # the process died without a word: killed (out of memory?) or crashed
        process.join()
        raise KdiqaError(f"stage {name}: its process ended (exit code {process.exitcode}) before finishing") from None
    if ok:
        return value
    raise value


def _stage_process(name: str, stage: Callable[..., dict[str, Any]], recipe: Recipe, run: RunDir, verbose: bool,
                   start_method: str, send: Connection) -> None:
    """One stage in a process of its own: the outcome goes back through ``send``, never a traceback on screen."""
    # A process started by forkserver starts its own children (DataLoader workers) by forkserver too, and
    # such a worker imports torch afresh: the label-only student, whose loaders start new workers every
    # 25 steps, ran 2.6x slower. Its children start as the command's own would.
    multiprocessing.set_start_method(start_method, force=True)
    setup_console(verbose)
    force_plain_progress()  # two bars on one terminal would overwrite each other: plain lines, each naming its stage
    use_recipe_threads(recipe)
    try:
        outcome: tuple[bool, Any] = (True, stage(recipe, run))
    except KeyboardInterrupt:
        return
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent, which reports it
        outcome = (False, exc)
    try:
        send.send(outcome)
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle: its text does
        exc = outcome[1]
        text = f"stage {name}: {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"
        send.send((False, RuntimeError(text)))
    finally:
        send.close()
