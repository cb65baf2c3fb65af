"""Figures used across the chapters: point clouds, densities, trajectories, vector fields
and an animation of the flow (HTML/JavaScript via ``to_jshtml``; no ffmpeg needed).

Every function draws on the axes it is given (or new ones) and returns them, so a chapter
can put several panels side by side.
"""

from __future__ import annotations

import re
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation

__all__ = [
    "square_grid", "scatter", "density_heatmap", "trajectories", "vector_field", "animate",
    "show_table",
]

LIM = 1.5  # default half-width of the square shown


def _axes(ax, title: str | None, lim: float | None):
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    if title:
        ax.set_title(title)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("$x^{(1)}$")
    ax.set_ylabel("$x^{(2)}$")
    return ax


def square_grid(n: int = 200, lim: float = LIM) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Cell centres of an n x n grid on [-lim, lim]^2 as points [n*n, 2] (row 0 at the top),
    the area of one cell, and the image shape (n, n)."""
    centres = -lim + (np.arange(n) + 0.5) * (2 * lim / n)
    xs, ys = np.meshgrid(centres, centres[::-1])
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    return points, (2 * lim / n) ** 2, (n, n)


def scatter(points, ax=None, *, title: str | None = None, lim: float | None = LIM, **kwargs):
    """A 2D point cloud with equal aspect."""
    ax = _axes(ax, title, lim)
    points = np.asarray(points)
    style = dict(s=1, alpha=0.5, rasterized=True) | kwargs
    ax.scatter(points[:, 0], points[:, 1], **style)
    return ax


def density_heatmap(values, ax=None, *, title: str | None = None, lim: float = LIM, log: bool = False,
                    colorbar: bool = True, **kwargs):
    """An image [H, W] of density values (row 0 at the top) on [-lim, lim]^2."""
    ax = _axes(ax, title, lim)
    style = dict(cmap="magma", origin="upper", extent=(-lim, lim, -lim, lim), interpolation="nearest") | kwargs
    shown = ax.imshow(np.asarray(values), **style)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="log density" if log else "density")
    return ax


def trajectories(trajectory, ax=None, *, title: str | None = None, lim: float | None = LIM, n_show: int = 200):
    """Paths [k, n, 2] from noise (grey dots) to samples (coloured dots)."""
    ax = _axes(ax, title, lim)
    traj = np.asarray(trajectory)[:, :n_show]
    ax.plot(traj[:, :, 0], traj[:, :, 1], color="tab:blue", alpha=0.25, lw=0.6)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=4, color="grey", label="$x_0$ (noise)", zorder=3)
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=4, color="tab:red", label="$x_1$ (sample)", zorder=3)
    ax.legend(loc="upper right", fontsize=8)
    return ax


def vector_field(velocity: Callable, t: float, ax=None, *, title: str | None = None, lim: float = LIM, n: int = 21):
    """Arrows of ``velocity(x, t)`` on an n x n grid, coloured by speed."""
    ax = _axes(ax, title, lim)
    g = np.linspace(-lim, lim, n)
    xs, ys = np.meshgrid(g, g)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    v = np.asarray(velocity(pts, np.float32(t)))
    speed = np.linalg.norm(v, axis=1)
    ax.quiver(pts[:, 0], pts[:, 1], v[:, 0], v[:, 1], speed, cmap="viridis", angles="xy")
    return ax


def animate(trajectory, ts, *, lim: float = LIM, n_show: int = 2000, interval: int = 80) -> str:
    """An HTML/JavaScript animation of the points [k, n, 2] flowing over times ts [k]."""
    traj = np.asarray(trajectory)[:, :n_show]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    _axes(ax, None, lim)
    dots = ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, alpha=0.6)
    label = ax.set_title(f"t = {float(ts[0]):.2f}")

    def frame(k):
        dots.set_offsets(traj[k])
        label.set_text(f"t = {float(ts[k]):.2f}")
        return dots, label

    anim = animation.FuncAnimation(fig, frame, frames=len(traj), interval=interval, blit=False)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return _offline_controls(html)


# Matplotlib's player draws its buttons with Font Awesome icons loaded from a CDN, which
# fails offline (and in the browser test); plain Unicode symbols need no download.
_FONT_AWESOME = re.compile(r'<link rel="stylesheet"\s+href="https://[^"]*font-awesome[^"]*">')
_ICONS = {
    "fa fa-minus": "\u2212", "fa fa-fast-backward": "\u23ee", "fa fa-step-backward": "\u25c0\u2759",
    "fa fa-play fa-flip-horizontal": "\u25c0", "fa fa-pause": "\u23f8", "fa fa-play": "\u25b6",
    "fa fa-step-forward": "\u2759\u25b6", "fa fa-fast-forward": "\u23ed", "fa fa-plus": "+",
}


def _offline_controls(html: str) -> str:
    html = _FONT_AWESOME.sub("", html)
    for icon, symbol in _ICONS.items():
        html = html.replace(f'<i class="{icon}"></i>', symbol)
    return html


def show_table(header, rows) -> None:
    """Display a table in two formats at once: Markdown (read by Jupyter and Colab) and
    HTML (used by the book). ``header`` is a list of column titles, ``rows`` a list of
    rows of the same length; cells are shown with ``str``."""
    from IPython.display import display

    header = [str(x) for x in header]
    rows = [[str(x) for x in row] for row in rows]
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column.")
    lines = [header, ["---"] * len(header), *rows]
    markdown = "\n".join("| " + " | ".join(row) + " |" for row in lines)
    html = "".join(
        "<tr>" + "".join(f"<{tag}>{x}</{tag}>" for x in row) + "</tr>"
        for tag, row in [("th", header)] + [("td", row) for row in rows]
    )
    display({"text/markdown": markdown, "text/html": f"<table>{html}</table>"}, raw=True)
