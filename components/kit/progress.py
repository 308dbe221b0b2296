"""Progress of a long loop (training batches, models scored, latency rounds) that suits where it is read.

`progress(...)` is a live tqdm bar when its stream is a terminal. Anywhere else (a log file, a pipe, the
Prefect UI, which receives what a flow run prints: flows/run_log.py) a bar's redraws would land as
carriage-return fragments, so it prints plain lines with `print` instead: one every `every` items or every
`seconds` seconds, whichever comes first, and a closing line with the count, the seconds and the rate. Each
line carries the latest postfix (`set_postfix(loss=...)`):

      distill epoch 1/3: 40/120 batch, 31 s, 1.3 batch/s, loss=0.6931
      distill epoch 1/3: done, 120 batch in 92.4 s (1.3 batch/s), loss=0.6012

Both kinds take the calls the stages make: iteration, `update(n)`, `set_postfix(**values)`,
`set_postfix_str(text)`, `close()`, and `with`. A loop that stops early (an exception, a `break`) prints no
closing line. `disable=True` (a data-parallel process other than the main one) shows nothing.

    for index in progress(batches, "distill epoch 1/3", unit="batch"):
        ...
    bar = progress(None, "evaluate latency", total=24, unit="share", every=4)
    bar.update(1)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from tqdm import tqdm


def progress(
    iterable: Iterable | None = None,
    desc: str = "",
    total: int | None = None,
    unit: str = "batch",
    every: int | None = None,
    seconds: float = 30.0,
    disable: bool = False,
    stream: TextIO | None = None,
):
    """A tqdm bar on a terminal `stream` (default: standard output), else a `Lines` that prints plain lines:
    every `every` items (None: by time only) or `seconds` seconds, whichever comes first."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    # Standard output, where the stages print their lines: a log of it holds both, in order.
    out = stream if stream is not None else sys.stdout
    if disable or getattr(out, "isatty", lambda: False)():
        # leave=False: the bar is gone when the loop ends; the stage's own summary line stays.
        return tqdm(
            iterable, desc=desc, total=total, unit=unit, leave=False, mininterval=2.0, file=out, disable=disable
        )
    return Lines(iterable, desc, total, unit, every, seconds, stream)


class Lines:
    """Progress as plain lines through `print` (to `stream`, or where `print` goes by default: under a flow
    run, also into its Prefect log). Never a carriage return."""

    def __init__(
        self,
        iterable: Iterable | None,
        desc: str,
        total: int | None,
        unit: str,
        every: int | None,
        seconds: float,
        stream: TextIO | None,
    ):
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.every, self.seconds, self.stream = every, seconds, stream
        self.n, self.postfix, self.closed = 0, "", False
        self.started = self.last_line = time.monotonic()
        self.last_n = 0  # the count at the last line printed

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n == self.total:
            return  # the closing line follows
        due_by_count = self.every is not None and self.n - self.last_n >= self.every
        if due_by_count or now - self.last_line >= self.seconds:
            count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
            self.say(f"{count} {self.unit}, {now - self.started:.0f} s, {self.rate(now)}")
            self.last_line, self.last_n = now, self.n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values) -> None:
        # tqdm's signature, so a call site works with either kind; `refresh` only matters to a bar.
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        self.say(f"done, {self.n} {self.unit} in {now - self.started:.1f} s ({self.rate(now)})")

    def rate(self, now: float) -> str:
        """Items per second, or seconds per item when below one a second (as tqdm shows it)."""
        elapsed = now - self.started
        if self.n == 0 or elapsed <= 0:
            return f"- {self.unit}/s"
        per_second = self.n / elapsed
        return f"{per_second:.1f} {self.unit}/s" if per_second >= 1 else f"{1 / per_second:.1f} s/{self.unit}"

    def say(self, text: str) -> None:
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"  {self.desc}: {text}{postfix}", file=self.stream, flush=True)
