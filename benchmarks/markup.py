"""What the sections' markdown is made of: tables, numbers and figure links."""

from collections.abc import Callable, Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, without an exponent for ordinary sizes."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"
    return f"{x:.{digits - 1}e}"


def secs(x: float) -> str:
    """Seconds, to a precision that suits their size."""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def interval(ci: Sequence[float], fmt: Callable[[float], str] = num) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def figure(alt: str, image_dir: str, name: str) -> str:
    """The link to section ``name``'s figure, which run.py writes as ``name``.png."""
    return f"![{alt}]({image_dir}/{name}.png)"
