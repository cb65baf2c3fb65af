"""The benchmarks' sections, one module each, and what every module provides (``Section``).

``report.SECTIONS`` lists the modules in page order: adding a section is one module here
and one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # common imports Section from here: importing it back would be circular
    from common import Context


@dataclass(frozen=True)
class Goal:
    """A goal the benchmarks set: ``name``, a format string over the section's results and
    ``threshold``, and ``check(results, threshold)``, which gives the measured figure as text
    and whether it meets the goal (None: not measured). Figures draw the same threshold."""

    name: str
    threshold: float
    check: Callable[[dict, float], tuple[str, bool | None]]

    def verdict(self, results: dict) -> dict:
        measured, met = self.check(results, self.threshold)
        return {"goal": self.name.format(threshold=self.threshold, **results), "measured": measured, "met": met}


class Section(Protocol):
    """What run.py and report.py use of a section module."""

    NAME: str  # its key in the results JSON, and its name for --only
    TITLE: str  # its heading on the page
    OPT_IN: bool  # run only when named
    GOALS: tuple[Goal, ...]

    def run(self, ctx: Context) -> dict: ...  # measures; the dict goes into the JSON

    def render(self, results: dict, image_dir: str) -> str: ...  # its markdown

    def plot(self, results: dict, path: Path) -> None: ...  # draws its figure at path, if it has one
