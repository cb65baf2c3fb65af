"""Draw the two-moons image that ships inside fm_helpers (fm_helpers/assets/two_moons.png).

The original tutorial downloaded this picture from a URL that no longer exists, so we
draw our own: two thick half-rings, black on white, like the classic "two moons" data
set. They are drawn large with Pillow, softened with a Gaussian blur (like ink on paper:
a density with soft edges is one a smooth flow can fit) and shrunk to 64x64 grey levels.

Run from the repository root:  python scripts/make_two_moons.py
The output is deterministic: running it again gives the same bytes.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

BIG = 1024  # drawing resolution, pixels per side
OUT_SIZE = 64  # shipped resolution, pixels per side
RADIUS = 0.55  # ring radius, in units of the [-1, 1] square
THICKNESS = 0.20  # ring thickness, same units
BLUR = 0.03  # Gaussian blur standard deviation, same units
# Centres of the two rings (x, y) in the upright [-1, 1] frame.
UPPER = (-0.275, -0.10)  # its upper half is drawn
LOWER = (0.275, 0.10)  # its lower half is drawn


def to_pixels(x: float, y: float) -> tuple[float, float]:
    return (x + 1) / 2 * BIG, (1 - y) / 2 * BIG


def draw() -> Image.Image:
    img = Image.new("L", (BIG, BIG), 255)
    pen = ImageDraw.Draw(img)
    width = round(THICKNESS / 2 * BIG)
    for (cx, cy), (start, end) in [(UPPER, (180, 360)), (LOWER, (0, 180))]:
        # Pillow measures angles clockwise from +x in image coordinates (y down), so
        # 180..360 is the upper half and 0..180 the lower half of the ring.
        r_out = RADIUS + THICKNESS / 2
        left, top = to_pixels(cx - r_out, cy + r_out)
        right, bottom = to_pixels(cx + r_out, cy - r_out)
        pen.arc([left, top, right, bottom], start, end, fill=0, width=width)
    img = img.filter(ImageFilter.GaussianBlur(BLUR / 2 * BIG))
    return img.resize((OUT_SIZE, OUT_SIZE), Image.Resampling.BOX)


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "fm_helpers" / "assets" / "two_moons.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    draw().save(out, optimize=False)
    print(f"wrote {out}")
