"""The README stays what a user needs on day one: CI runs its test command verbatim, it is short,
and every page it sends readers to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(ci) if "verbatim" in line)
    command = ci[marker + 1].strip()
    assert command.startswith("pip install") and "pytest" in command
    (line,) = [line for line in README.splitlines() if "pytest -q" in line and "pip install" in line]
    assert line.endswith(command)


def test_the_two_quick_start_commands_use_their_own_venvs():
    venvs = re.findall(r"python3 -m venv (\S+) && \. (\S+)/bin/activate", README)
    assert len(venvs) == 2 and all(made == used for made, used in venvs)
    assert len({made for made, _ in venvs}) == 2


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) < 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).exists(), link


def test_docs_links_resolve():
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not link.startswith("http"):
                assert (page.parent / link).exists(), f"{page.name}: {link}"
