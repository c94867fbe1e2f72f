"""What a cache run says while it works: one line on stderr per step, a progress line every few seconds."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

PROGRESS_SECONDS = 2.0


def printer(enabled: bool) -> Callable[[str], None]:
    """A ``say(message)`` that prints to stderr, or does nothing (``progress=False``)."""
    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return say


class Meter:
    """A progress line every few seconds: views done, rate, time left."""

    def __init__(self, say: Callable[[str], None], todo: int, already: int) -> None:
        self.say, self.todo, self.already = say, todo, already
        self.done = 0
        self.start = self.last = time.perf_counter()
        if already:
            say(f"cache: resuming, {already} views already done, {todo} to go")

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS and self.done < self.todo:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.todo - self.done) / rate if rate > 0 else float("inf")
        self.say(f"cache: {self.done}/{self.todo} views ({100 * self.done / self.todo:.0f}%), {rate:.1f} views/s, {left:.0f} s left")
