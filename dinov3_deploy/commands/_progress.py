"""Rich progress for long commands: a spinner per step, a tick with its time when it is done."""

from __future__ import annotations

import time
from contextlib import contextmanager


class RichProgress:
    def __init__(self, console) -> None:
        self.console = console
        self._status = None
        self._step = ""

    @contextmanager
    def step(self, text: str):
        self._step = text
        t0 = time.perf_counter()
        with self.console.status(f"{text} ...") as status:
            self._status = status
            try:
                yield
            except BaseException:
                self.console.print(f"[red]✗[/] {text}")
                raise
            finally:
                self._status = None
        self.console.print(f"[green]✓[/] {text} [dim]({time.perf_counter() - t0:.1f}s)[/]")

    def log(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._step}: {text} ...")


# Width of a console that is not a terminal. Rich tables take their natural width (they do not
# expand to the console), so a wide console only stops rich from shrinking columns and cutting
# cells short with "…" when the output goes to a file, a pipe or a CI log.
NON_TERMINAL_WIDTH = 1000


def make_console():
    """A rich console. When output is not a terminal (CI logs, pipes, files) it is wide, so tables are
    written whole instead of fitted to rich's default 80 columns (COLUMNS still wins when set)."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=NON_TERMINAL_WIDTH)
    return console
