"""What the sections' figures share: a backend without a display, axes, and saving."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the benchmarks run headless
import matplotlib.pyplot as plt  # noqa: E402


def log_x(ax: plt.Axes, ticks: Sequence[int]) -> None:
    """A logarithmic x axis labelled at ``ticks`` only (step counts, NFE)."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])


def save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
