"""Rich progress for long commands: a spinner per step, a tick with its time when it is done."""

from __future__ import annotations

import time
from contextlib import contextmanager


class RichProgress:
    def __init__(self, console) -> None:
        self.console = console
        self._status = None
        self._step = ""
        self.report = None

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


def make_console():
    """A rich console; when output is not a terminal (CI logs, pipes) it is 120 columns wide rather
    than rich's 80, so parity tables are not truncated (COLUMNS still wins when set)."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console
