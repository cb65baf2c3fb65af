"""Draw the three pictures of chapter 10's labelled data (fm_helpers/assets/shape_*.png).

Three classes, each one picture as in chapter 2: a disc, a square and a triangle, black
on white, placed like a Venn diagram so that every two of them overlap in part and all
three share a small patch in the middle. Guidance needs such overlaps: where two classes
share ground it has something to trade; where they are apart it could only sharpen.
Each shape is drawn large with Pillow, softened with a Gaussian blur (a density with
soft edges is one a smooth flow can fit) and shrunk to 64x64 grey levels.

Run from the repository root:  python scripts/make_three_shapes.py
The output is deterministic: running it again gives the same bytes.
"""

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

BIG = 1024  # drawing resolution, pixels per side
OUT_SIZE = 64  # shipped resolution, pixels per side
BLUR = 0.06  # Gaussian blur standard deviation, in units of the [-1, 1] square
DISC = ((0.0, 0.30), 0.40)  # centre (x, y) and radius
SQUARE = ((-0.27, -0.17), 0.34)  # centre and half the side
TRIANGLE = ((0.27, -0.20), 0.50)  # centre and the distance from it to each corner
NAMES = ("disc", "square", "triangle")


def to_pixels(x: float, y: float) -> tuple[float, float]:
    return (x + 1) / 2 * BIG, (1 - y) / 2 * BIG


def _finish(img: Image.Image) -> Image.Image:
    img = img.filter(ImageFilter.GaussianBlur(BLUR / 2 * BIG))
    return img.resize((OUT_SIZE, OUT_SIZE), Image.Resampling.BOX)


def draw(name: str) -> Image.Image:
    img = Image.new("L", (BIG, BIG), 255)
    pen = ImageDraw.Draw(img)
    if name == "disc":
        (cx, cy), r = DISC
        pen.ellipse([*to_pixels(cx - r, cy + r), *to_pixels(cx + r, cy - r)], fill=0)
    elif name == "square":
        (cx, cy), h = SQUARE
        pen.rectangle([*to_pixels(cx - h, cy + h), *to_pixels(cx + h, cy - h)], fill=0)
    else:  # an upright equilateral triangle
        (cx, cy), r = TRIANGLE
        corners = [(cx + r * math.cos(a), cy + r * math.sin(a))
                   for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
        pen.polygon([to_pixels(x, y) for x, y in corners], fill=0)
    return _finish(img)


if __name__ == "__main__":
    folder = Path(__file__).resolve().parents[1] / "fm_helpers" / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        out = folder / f"shape_{name}.png"
        draw(name).save(out, optimize=False)
        print(f"wrote {out}")
