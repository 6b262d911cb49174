"""Progress on long work: a rich bar on a terminal, a few plain lines otherwise.

Core functions take an optional ``progress`` callable ``advance(n)``; only the shell makes one.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. On a terminal a live bar; otherwise a line every ~10% (and at the end)."""
    if not enabled:
        yield lambda n=1: None
        return
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    done = 0
    next_report = max(1, total // 10)
    start = time.perf_counter()

    def advance(n: int = 1) -> None:
        nonlocal done, next_report
        done += n
        if done >= next_report or done >= total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"{description}: {done}/{total} ({rate:.0f}/s)", file=sys.stderr, flush=True)
            next_report = done + max(1, total // 10)

    yield advance
