"""Progress on a terminal for long work (train-global, LSTM epochs, the
backtest, benchmarks), quiet everywhere else.

The one API::

    from engine.progress import progress

    with progress(total=n, desc="backtest", quiet=args.quiet) as bar:
        for ...:
            bar.update()        # one step done (``update(k)``: k steps)
            bar.print(line)     # a report line on stdout, above the bar

A bar is drawn on stderr by tqdm, and only when stderr is a terminal and
``quiet`` is false: logs, pipes, cron mails and CI output stay clean, and
stdout (where ``--json`` prints) is never touched. ``total`` may be None
(a count without an end).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["Progress", "progress"]


class Progress:
    """What the body of ``with progress(...)`` gets: ``update(n)``."""

    def __init__(self, bar=None) -> None:
        self._bar = bar
        #: steps counted so far (also when quiet)
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def print(self, text: str) -> None:
        """A line on stdout that does not tear the bar (it is redrawn below)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn (stderr a terminal, not quiet)."""
        return self._bar is not None


@contextmanager
def progress(total: int | None, desc: str, quiet: bool = False, *,
             file: IO[str] | None = None) -> Iterator[Progress]:
    """A progress bar of ``total`` steps labelled ``desc`` on ``file``
    (default: stderr), drawn only when that is a terminal and not ``quiet``."""
    out = sys.stderr if file is None else file
    isatty = getattr(out, "isatty", None)
    if quiet or isatty is None or not isatty():
        yield Progress()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=out, leave=True, dynamic_ncols=True, mininterval=0.2)
    try:
        yield Progress(bar)
    finally:
        bar.close()
