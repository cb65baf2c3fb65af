"""ImageDensity against direct computation, and load_image on good and bad input.

The loading tests back every claim of the appendix page book/loading_images.md.
"""

import functools
import hashlib
import http.server
import io
import socket
import struct
import threading
import warnings
import zlib

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import QuietHandler, free_port  # a local HTTP server, shared with test_results
from fm_helpers.data import ImageDensity, ImageLoadError, load_image, pixel_points, split

IMAGE = load_image()


@pytest.fixture(scope="module")
def density():
    return ImageDensity(IMAGE)


def test_shipped_image():
    assert IMAGE.dtype == np.float32 and IMAGE.ndim == 2
    assert 0.0 <= IMAGE.min() < 0.1 and IMAGE.max() == 1.0  # black shapes on white


def test_density_integrates_to_one(density):
    # midpoint rule on a grid 4x finer than the pixels, over a square larger than the support
    n = 4 * density.width
    lim = 1.25
    c = -lim + (np.arange(int(n * lim)) + 0.5) * (2 * lim / int(n * lim))
    xs, ys = np.meshgrid(c, c)
    p = np.exp(density.log_prob(np.stack([xs.ravel(), ys.ravel()], 1)))
    assert abs(p.sum() * (c[1] - c[0]) ** 2 - 1.0) < 1e-9


def test_entropy_matches_direct_sum(density):
    darkness = 1.0 - IMAGE.astype(np.float64)
    h, w = IMAGE.shape
    total = 0.0
    for i in range(h):
        for j in range(w):
            if darkness[i, j] > 0:
                mass = darkness[i, j] / darkness.sum()
                total -= mass * np.log(mass / (4.0 / (h * w)))
    assert density.entropy() == pytest.approx(total, abs=1e-9)


def test_log_prob_is_the_pixel_weight(density):
    # the centre of pixel (i, j) has density P_ij / cell area
    i, j = np.unravel_index(np.argmax(density.probs), density.probs.shape)
    centre = np.array([[-1 + (j + 0.5) * 2 / density.width, 1 - (i + 0.5) * 2 / density.height]])
    expected = np.log(density.probs[i, j] / density.cell_area)
    assert density.log_prob(centre)[0] == pytest.approx(expected)
    assert density.log_prob(np.array([[1.5, 0.0]]))[0] == -np.inf


def test_sample_histogram_matches_pixel_weights(density):
    """Chi-square goodness of fit of 200k samples' pixel counts, pixels pooled so that
    every expected count is at least 20."""
    n = 200_000
    samples = np.asarray(density.sample(jax.random.PRNGKey(0), n))
    rows, cols, inside = density.cell_index(samples)
    assert inside.all()
    counts = np.zeros_like(density.probs)
    np.add.at(counts, (rows, cols), 1)
    order = np.argsort(density.probs.ravel())
    expected, observed = n * density.probs.ravel()[order], counts.ravel()[order]
    assert observed[expected == 0].sum() == 0, "a white pixel received samples"
    keep = expected > 0
    expected, observed = expected[keep], observed[keep]
    # pool the smallest cells together until each bin expects >= 20
    bins, exp_bins, obs_bins, acc_e, acc_o = [], [], [], 0.0, 0.0
    for e, o in zip(expected, observed):
        acc_e, acc_o = acc_e + e, acc_o + o
        if acc_e >= 20:
            exp_bins.append(acc_e), obs_bins.append(acc_o)
            acc_e, acc_o = 0.0, 0.0
    exp_bins[-1] += acc_e
    obs_bins[-1] += acc_o
    _, p_value = stats.chisquare(obs_bins, exp_bins)
    assert p_value > 0.001


def test_jitter_is_uniform_inside_pixels(density):
    samples = np.asarray(density.sample(jax.random.PRNGKey(1), 50_000))
    frac_x = (samples[:, 0] + 1) * density.width / 2 % 1
    frac_y = (1 - samples[:, 1]) * density.height / 2 % 1
    for frac in (frac_x, frac_y):
        assert stats.kstest(frac, "uniform").pvalue > 0.001


def test_same_key_same_samples(density):
    a = density.sample(jax.random.PRNGKey(3), 100)
    b = density.sample(jax.random.PRNGKey(3), 100)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (100, 2)
    c = density.sample(jax.random.PRNGKey(4), 100)
    assert not np.array_equal(a, c), "another key, other samples"
    typed = density.sample(jax.random.key(3), 100)  # a new-style typed key, same bits
    np.testing.assert_array_equal(a, typed)
    with pytest.raises(ValueError, match="one JAX PRNG key"):
        density.sample(jax.random.split(jax.random.PRNGKey(0), 3), 10)


def effective_masses(cell_of, bits: int, n_cells: int) -> np.ndarray:
    """The probability with which a sampler picks each cell, found from its cell choice.

    ``cell_of(m)`` is the cell chosen for the uniform ``u = m / 2**bits``, m an integer
    array; it grows with m. Bisection finds, for every k, the first m whose cell is >= k;
    cell k owns the m between two such borders, so its mass is their gap / 2**bits.
    """
    k = np.arange(1, n_cells, dtype=np.int64)
    lo, hi = np.zeros_like(k), np.full_like(k, 2**bits)
    for _ in range(bits + 1):
        mid = (lo + hi) // 2
        right = cell_of(mid) >= k
        hi, lo = np.where(right, mid, hi), np.where(right, lo, mid + 1)
    borders = np.concatenate([[0], lo, [2**bits]])
    return np.diff(borders) / 2.0**bits


def test_sampler_cell_masses_are_the_pixel_weights(density, monkeypatch):
    """Inverse-CDF sampling picks cell k when cdf[k-1] <= u < cdf[k]. With the sampler's CDF
    and uniforms u of 53 bits, each cell's probability is P_ij up to float64 rounding, and a
    white cell's is exactly 0. (On the earlier float32 CDF this measures 0.86%.)"""
    cdf = np.asarray(density._cdf)
    rule = lambda m: np.searchsorted(cdf, m * 2.0**-53, side="right")  # noqa: E731
    masses = effective_masses(rule, 53, density.probs.size)
    weights = density.probs.ravel()
    dark = weights > 0
    relative = np.abs(masses[dark] - weights[dark]) / weights[dark]
    assert relative.max() < 1e-9, f"cell masses off by up to {relative.max():.2e} (relative)"
    assert np.all(masses[~dark] == 0.0), "a white cell can be picked"
    # the sampler follows that rule, on the cell borders too, with 53-bit uniforms
    borders = np.concatenate([[0], np.cumsum(np.round(masses * 2.0**53))[:-1]]).astype(np.int64)
    for m in (borders, np.maximum(borders - 1, 0)):
        np.testing.assert_array_equal(density._cells(m * 2.0**-53), rule(m))
    seen = []
    cells = density._cells
    monkeypatch.setattr(density, "_cells", lambda u: seen.append(u) or cells(u))
    density.sample(jax.random.PRNGKey(0), 1000)
    (u,) = seen
    assert u.dtype == np.float64 and np.all(u * 2.0**53 == np.floor(u * 2.0**53)), "53-bit u"


def test_the_mass_check_sees_a_float32_cdf(density):
    """The same measurement on the earlier sampler (a float32 CDF searched with JAX's float32
    uniforms, multiples of 2**-23) finds errors of about a percent on the faintest pixels."""
    cdf32 = np.cumsum(density.probs.ravel()).astype(np.float32)
    cdf32[-1] = 1.0
    masses = effective_masses(
        lambda m: np.searchsorted(cdf32, (m * 2.0**-23).astype(np.float32), side="right"),
        23, density.probs.size)
    weights = density.probs.ravel()
    dark = weights > 0
    assert (np.abs(masses[dark] - weights[dark]) / weights[dark]).max() > 5e-3


def test_every_sample_lies_in_the_cell_it_was_drawn_for(density):
    """Jitter at its largest value (1 - 2**-53) puts a point within float32 rounding of the
    far border of its cell; rounding must not move it into the next cell."""
    dark = np.flatnonzero(density.probs.ravel())
    top = np.full((len(dark), 2), 1.0 - 2.0**-53)
    rows, cols = np.divmod(dark, density.width)
    unguarded = np.stack([-1.0 + (cols + top[:, 0]) * 2 / density.width,
                          1.0 - (rows + top[:, 1]) * 2 / density.height], 1).astype(np.float32)
    got_rows, got_cols, _ = density.cell_index(unguarded)
    assert np.any((got_rows != rows) | (got_cols != cols)), "the case this test is about"
    points = density._points_in_cells(dark, top)
    got_rows, got_cols, inside = density.cell_index(points)
    assert inside.all()
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_cols, cols)
    assert np.all(np.isfinite(density.log_prob(points)))
    assert np.abs(points - unguarded).max() < 1e-6, "moved by float32 steps only"


def test_pixel_points_is_the_original_method():
    small = load_image(size=32)
    points = pixel_points(small)
    expected = [(-1 + (j + 0.5) * 2 / 32, 1 - (i + 0.5) * 2 / 32)
                for i in range(32) for j in range(32) if small[i, j] < 0.5]
    assert len(points) == len(expected) == int((small < 0.5).sum())
    np.testing.assert_allclose(points, np.array(expected), atol=1e-7)
    assert points.dtype == np.float32


def test_split_is_a_partition():
    pts = np.arange(100, dtype=np.float32).reshape(50, 2)
    tr, va, te = split(pts, seed=1)
    assert (len(tr), len(va), len(te)) == (40, 5, 5)
    together = np.concatenate([tr, va, te])
    assert sorted(map(tuple, together)) == sorted(map(tuple, pts))
    np.testing.assert_array_equal(split(pts, seed=1)[0], tr)


# ---- loading: paths, bytes, URLs and what is refused ---------------------------------


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_bytes(array: np.ndarray, mode="L") -> bytes:
    # the mode follows from the array (2D uint8: L; 4 channels: RGBA); fromarray(mode=) is deprecated
    return encode(Image.fromarray(array).convert(mode))


def test_load_from_path_and_bytes(tmp_path):
    arr = np.full((8, 6), 255, np.uint8)
    arr[2:5, 1:3] = 0
    path = tmp_path / "shape.png"
    path.write_bytes(png_bytes(arr))
    from_path = load_image(path)
    np.testing.assert_array_equal(from_path, arr / 255.0)
    np.testing.assert_array_equal(load_image(path.read_bytes()), from_path)
    assert load_image(str(path), size=4).shape == (4, 4)
    assert load_image(path, size=(5, 3)).shape == (3, 5), "size is (width, height)"


# ---- pixel formats: every format gives the grey levels of the 8-bit picture ----------

LEVELS = np.random.default_rng(7).integers(0, 256, (9, 7)).astype(np.uint8)
LEVELS[0, :] = [0, 1, 127, 128, 200, 254, 255]  # black, white and the levels around 0.5
EIGHT_BIT = (LEVELS / 255.0).astype(np.float32)  # load_image of the 8-bit greyscale file


def grey_palette_image(levels: np.ndarray) -> Image.Image:
    image = Image.frombytes("P", levels.shape[::-1], levels.tobytes())
    image.putpalette([c for v in range(256) for c in (v, v, v)])  # index v shows grey v
    return image


def unsigned_32bit_tiff(levels: np.ndarray) -> bytes:
    """Pillow writes 32-bit TIFFs as signed; we flip the SampleFormat tag to unsigned."""
    full = np.round(levels / 255 * (2**32 - 1)).astype(np.uint32)
    data = encode(Image.fromarray(full.view(np.int32)), "TIFF")
    signed_tag = b"\x53\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # tag 339, SHORT, 1 value: 2
    assert data.count(signed_tag) == 1
    return data.replace(signed_tag, signed_tag[:8] + b"\x01\x00")


L_IMAGE = Image.fromarray(LEVELS)
FORMATS = {
    # name: (encoded file, the mode Pillow opens it in, allowed difference in grey levels)
    "L (8-bit)": (encode(L_IMAGE), "L", 0.0),
    "I;16 PNG": (encode(Image.fromarray(LEVELS.astype(np.uint16) * 257)), "I;16", 0.0),
    "I;16 TIFF": (encode(Image.fromarray(LEVELS.astype(np.uint16) * 257), "TIFF"), "I;16", 0.0),
    "I 16-bit PGM": (encode(Image.fromarray(LEVELS.astype(np.uint16) * 257), "PPM"), "I", 0.0),
    "I 32-bit signed TIFF": (
        encode(Image.fromarray(np.round(LEVELS / 255 * (2**31 - 1)).astype(np.int32)), "TIFF"),
        "I", 1e-6),
    "I 32-bit unsigned TIFF": (unsigned_32bit_tiff(LEVELS), "I", 1e-6),
    "F TIFF": (encode(Image.fromarray((LEVELS / 255).astype(np.float32)), "TIFF"), "F", 0.0),
    "P PNG": (encode(grey_palette_image(LEVELS)), "P", 0.0),
    "LA PNG": (encode(L_IMAGE.convert("LA")), "LA", 0.0),
    "RGB PNG": (encode(L_IMAGE.convert("RGB")), "RGB", 0.0),
    "RGBA PNG": (encode(L_IMAGE.convert("RGBA")), "RGBA", 0.0),
    "CMYK TIFF": (encode(L_IMAGE.convert("CMYK"), "TIFF"), "CMYK", 0.0),
    "I;16B TIFF (big-endian)": (
        encode(Image.frombytes("I;16B", L_IMAGE.size,
                               (LEVELS.astype(">u2") * 257).tobytes()), "TIFF"),
        "I;16B", 0.0),
    "PA TIFF": (encode(grey_palette_image(LEVELS).convert("PA"), "TIFF"), "PA", 0.0),
    "YCbCr TIFF": (encode(L_IMAGE.convert("YCbCr"), "TIFF"), "YCbCr", 0.0),
    # 8-bit CIELab holds lightness L*, not grey level, and Pillow's conversions to and
    # from it round twice: this one comes back within 1.5 levels, not exactly
    "LAB TIFF": (encode(L_IMAGE.convert("LAB"), "TIFF"), "LAB", 1.5 / 255),
}

with warnings.catch_warnings():  # Pillow deprecates its IM format (removal: Pillow 15)
    warnings.simplefilter("ignore", DeprecationWarning)
    if "IM" in Image.SAVE:  # mode I from a format other than TIFF, PNG or PGM
        FORMATS["I 32-bit IM"] = (
            encode(Image.fromarray(np.round(LEVELS / 255 * (2**31 - 1)).astype(np.int32)),
                   "IM"), "I", 1e-6)


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_pixel_format_gives_the_8bit_grey_levels(name):
    """The same picture stored in each format Pillow reads gives the 8-bit file's grey
    levels: exactly, or within 1e-6 (far below one level, 1/255) where 32-bit integers
    are divided by 2**31 - 1 or 2**32 - 1, or within 1.5 levels for CIELab."""
    data, mode, tolerance = FORMATS[name]
    assert Image.open(io.BytesIO(data)).mode == mode, "the file really is in this format"
    got = load_image(data)
    assert got.dtype == np.float32 and got.shape == LEVELS.shape
    assert np.abs(got - EIGHT_BIT).max() <= tolerance


def test_16bit_greyscale_is_scaled_not_clipped():
    """Pillow's own convert("L") clips 16-bit values at 255 (so almost everything turns
    white); load_image scales them."""
    data = FORMATS["I;16 PNG"][0]
    clipped = np.asarray(Image.open(io.BytesIO(data)).convert("L")) / 255.0
    assert (clipped == 1.0).mean() > 0.9 > (EIGHT_BIT == 1.0).mean()
    np.testing.assert_array_equal(load_image(data), EIGHT_BIT.astype(np.float32))


def test_one_bit_images():
    black_and_white = np.where(LEVELS < 128, 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(black_and_white).convert("1", dither=Image.Dither.NONE))
    assert Image.open(io.BytesIO(data)).mode == "1"
    np.testing.assert_array_equal(load_image(data), black_and_white / 255.0)


def test_resizing_works_on_the_grey_levels_of_any_format():
    expected = load_image(FORMATS["L (8-bit)"][0], size=(5, 4))
    lanczos = Image.fromarray(EIGHT_BIT).resize((5, 4), Image.Resampling.LANCZOS)
    np.testing.assert_allclose(expected, np.clip(np.asarray(lanczos), 0, 1), atol=1e-6)
    for name in ("I;16 PNG", "RGB PNG", "F TIFF"):
        np.testing.assert_allclose(load_image(FORMATS[name][0], size=(5, 4)), expected, atol=1e-6)
    # Lanczos overshoots at sharp edges; the result is clipped back to [0, 1]
    raw = np.asarray(Image.fromarray(IMAGE).resize((32, 32), Image.Resampling.LANCZOS))
    assert raw.min() < 0.0 and raw.max() > 1.0, "the case this test is about"
    np.testing.assert_array_equal(load_image(size=32), np.clip(raw, 0.0, 1.0))


def test_colour_uses_pillows_luma_weights():
    """Colour becomes 0.299 R + 0.587 G + 0.114 B, Pillow's convert("L") without its
    rounding to 8 bits: within half a level of Pillow's result."""
    rgb = np.random.default_rng(3).integers(0, 256, (9, 7, 3)).astype(np.uint8)
    ours = load_image(encode(Image.fromarray(rgb)))
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    luma = (299 * r + 587 * g + 114 * b) / 255_000
    np.testing.assert_allclose(ours, luma, atol=1e-6)
    pillow = np.asarray(Image.fromarray(rgb).convert("L")) / 255.0
    assert np.abs(ours - pillow).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_partial_transparency_is_composited_on_white(mode):
    alpha = np.random.default_rng(5).integers(0, 256, LEVELS.shape).astype(np.uint8)
    if mode == "LA":
        image = Image.fromarray(np.stack([LEVELS, alpha], axis=-1))
    else:
        image = Image.fromarray(np.stack([LEVELS, LEVELS, LEVELS, alpha], axis=-1))
    assert image.mode == mode
    ours = load_image(encode(image))
    a = alpha / 255.0
    np.testing.assert_allclose(ours, a * EIGHT_BIT + (1 - a), atol=1e-6)
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    pillow = np.asarray(Image.alpha_composite(white, image.convert("RGBA")).convert("L")) / 255
    assert np.abs(ours - pillow).max() <= 1 / 255 + 1e-6, "within one level of Pillow's"


def test_transparent_pixels_count_as_white():
    rgba = np.random.default_rng(1).integers(0, 256, (4, 4, 4)).astype(np.uint8)
    rgba[..., 3] = 0  # any colour, fully transparent
    rgba[0, 0] = (0, 0, 0, 255)  # one opaque black pixel
    img = load_image(png_bytes(rgba, mode="RGBA"))
    assert img[0, 0] == 0.0 and img[1:, :].min() == 1.0
    palette = grey_palette_image(LEVELS)
    palette.info["transparency"] = int(LEVELS[0, 0])  # palette entry 0 (black) transparent
    got = load_image(encode(palette))
    assert np.all(got[LEVELS == LEVELS[0, 0]] == 1.0)
    np.testing.assert_array_equal(got[LEVELS != LEVELS[0, 0]], EIGHT_BIT[LEVELS != LEVELS[0, 0]])


def test_negative_integer_samples_are_black():
    values = np.array([[-5, 0], [2**30, 2**31 - 1]], np.int32)  # signed 32-bit TIFF
    got = load_image(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_allclose(got, [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)


def test_float_images_are_clipped_and_nan_is_white():
    values = np.array([[-0.5, 0.25], [1.5, np.nan]], np.float32)
    got = load_image(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_array_equal(got, np.array([[0.0, 0.25], [1.0, 1.0]], np.float32))


# ---- what is refused ------------------------------------------------------------------


def test_missing_file():
    with pytest.raises(ImageLoadError, match="no image file"):
        load_image("/no/such/picture.png")


def test_bytes_that_are_not_an_image():
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"this is plain text, not a PNG")


@pytest.mark.parametrize("bad", [42, np.zeros((4, 4))])
def test_a_source_of_the_wrong_type(bad):
    with pytest.raises(ImageLoadError, match="source must be"):
        load_image(bad)


def test_a_bad_size():
    with pytest.raises(ImageLoadError, match="size must be positive"):
        load_image(size=0)


def test_blank_image_defines_no_distribution():
    white = load_image(png_bytes(np.full((8, 8), 255, np.uint8)))
    with pytest.raises(ValueError, match="blank"):
        ImageDensity(white)
    with pytest.raises(ValueError, match="no pixel is darker"):
        pixel_points(white)


def test_image_over_the_pixel_cap():
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(png_bytes(np.zeros((64, 64), np.uint8)), max_pixels=1000)


def test_a_small_file_with_many_pixels_is_refused_by_default():
    """A one-bit 4100 x 4100 PNG is under 16 KB on disk but has 16.8 million pixels, more
    than the default max_pixels = 16 Mi (16,777,216)."""
    assert load_image.__kwdefaults__["max_pixels"] == 2**24 == 16_777_216
    assert load_image.__kwdefaults__["max_bytes"] == 20 * 2**20  # 20 MiB
    data = encode(Image.new("1", (4100, 4100), 1))
    assert len(data) < 16_000
    with pytest.raises(ImageLoadError, match="4100x4100 pixels, more than max_pixels=16777216"):
        load_image(data)


def test_pixels_are_counted_before_decoding():
    """A 5000 x 5000 PNG cut off a few bytes into its pixel data: refused on the size in
    its header, before any pixel is decoded (decoding fails with a different message)."""
    png = encode(Image.new("L", (5000, 5000), 255))
    cut = png[: png.index(b"IDAT") + 4 + 16]  # the header chunks and 16 bytes of pixel data
    with pytest.raises(ImageLoadError, match="5000x5000 pixels, more than max_pixels"):
        load_image(cut)
    with pytest.raises(ImageLoadError, match="could not be decoded"):
        load_image(cut, max_pixels=10**8)


@pytest.mark.parametrize("limit", [3000, 1000])  # 4096 pixels: Pillow warns; Pillow refuses
def test_pillows_decompression_bomb_limit_is_reported(monkeypatch, limit):
    # Pillow's default limit (about 89 million) is above ours, so ours is the one that applies
    assert Image.MAX_IMAGE_PIXELS == 1024**3 // 4 // 3 == 89_478_485
    assert Image.MAX_IMAGE_PIXELS > load_image.__kwdefaults__["max_pixels"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageLoadError, match="decompression-bomb limit"):
        load_image(png_bytes(np.zeros((64, 64), np.uint8)), max_pixels=10**6)


def png_header_only(width: int, height: int) -> bytes:
    """The first bytes of an 8-bit greyscale PNG of any size: its header and a few
    bytes of pixel data (a picture too large to encode here, in a few dozen bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x78\x9c")


def test_pictures_over_pillows_limit_are_refused_by_pillow_first():
    """With the defaults, max_pixels (16.8 million) refuses the pictures between the
    two limits; above Pillow's (89.5 million) Pillow's check runs first, at opening."""
    with pytest.raises(ImageLoadError, match="5000x5000 pixels, more than max_pixels"):
        load_image(png_header_only(5000, 5000))  # 25 million pixels
    with pytest.raises(ImageLoadError, match="decompression-bomb limit"):
        load_image(png_header_only(10_000, 10_000))  # 100 million pixels


def test_file_over_the_byte_cap(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(np.zeros((64, 64), np.uint8)))
    with pytest.raises(ImageLoadError, match="larger than"):
        load_image(path, max_bytes=10)
    with pytest.raises(ImageLoadError, match="exceed"):
        load_image(path.read_bytes(), max_bytes=10)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros(5), np.full((4, 4), 2.0), np.full((2, 2), np.nan)])
def test_arrays_of_the_wrong_shape_or_range(bad):
    with pytest.raises(ValueError, match="image"):
        ImageDensity(bad)


@pytest.mark.parametrize("bad", [np.zeros((5, 3)), np.zeros(4)])
def test_points_of_the_wrong_shape(density, bad):
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        density.log_prob(bad)


# ---- URLs: a server on 127.0.0.1 (conftest.served), so the tests need no network ----


def test_url_on_a_closed_port(tmp_path, monkeypatch):
    """Nothing listens: the connection is refused, and with no cached copy that is an error
    whose message says what to do instead."""
    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path))
    with pytest.raises(ImageLoadError, match="ConnectionError.*load_image\\(\\) with no argument"):
        load_image(f"http://127.0.0.1:{free_port()}/moons.png", timeout=2.0)


def test_url_that_never_answers_times_out(tmp_path, monkeypatch):
    """A server that accepts the connection and then stays silent: requests gives up after
    `timeout` seconds without an answer (ReadTimeout)."""
    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the system completes the connection; nobody ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/moons.png"
        with pytest.raises(ImageLoadError,
                           match="timeout of 0.5 s \\(ReadTimeout.*load_image\\(\\) with no"):
            load_image(url, timeout=0.5)


def test_the_quiet_handler_leaves_the_library_alone(served):
    assert http.server.SimpleHTTPRequestHandler.log_message is not QuietHandler.log_message
    assert "log_message" not in vars(http.server.SimpleHTTPRequestHandler)


def test_url_download_is_cached_by_content_hash(served, tmp_path, monkeypatch):
    root, base = served
    cache = tmp_path / "cache"
    monkeypatch.setenv("FM_HELPERS_CACHE", str(cache))
    arr = np.full((6, 6), 255, np.uint8)
    arr[1:4, 1:4] = 30
    content = png_bytes(arr)
    (root / "moon.png").write_bytes(content)
    url = f"{base}/moon.png"
    first = load_image(url, timeout=5)
    np.testing.assert_array_equal(first, (arr / 255.0).astype(np.float32))
    assert (cache / f"{hashlib.sha256(content).hexdigest()}.img").read_bytes() == content
    # the file goes away (the server answers 404): the cached copy is used, with a warning
    (root / "moon.png").unlink()
    with pytest.warns(UserWarning, match="HTTPError.*cached copy"):
        again = load_image(url, timeout=5)
    np.testing.assert_array_equal(again, first)
    # a cached copy larger than the byte cap of this call is refused too
    with pytest.raises(ImageLoadError, match="larger than"):
        load_image(url, timeout=5, max_bytes=10)


@pytest.mark.parametrize("server", ["closed port", "silent"])
def test_a_url_that_fails_falls_back_on_the_cache(tmp_path, monkeypatch, server):
    from fm_helpers.data import _store_url

    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path / "cache"))
    content = FORMATS["L (8-bit)"][0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if server == "silent":
            sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/moons.png"
        if server == "closed port":
            sock.close()
        _store_url(url, content)  # as an earlier, successful download would have
        error = "ConnectionError" if server == "closed port" else "ReadTimeout"
        with pytest.warns(UserWarning, match=f"{error}.*cached copy"):
            got = load_image(url, timeout=0.5)
    np.testing.assert_array_equal(got, EIGHT_BIT)


def test_the_cache_directory(tmp_path, monkeypatch):
    from fm_helpers.data import _cache_dir

    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path / "mine"))
    assert _cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FM_HELPERS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _cache_dir() == tmp_path / ".cache" / "fm_helpers"


def test_a_cache_that_cannot_be_written(served, tmp_path, monkeypatch):
    root, base = served
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("FM_HELPERS_CACHE", str(blocker))
    (root / "moon.png").write_bytes(FORMATS["L (8-bit)"][0])
    np.testing.assert_array_equal(load_image(f"{base}/moon.png", timeout=5), EIGHT_BIT)
    assert blocker.read_text().startswith("a file"), "nothing was written"


def test_url_over_the_byte_cap(served, tmp_path, monkeypatch):
    root, base = served
    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path / "cache"))
    (root / "big.png").write_bytes(png_bytes(np.zeros((256, 256), np.uint8)) + b"\0" * 200_000)
    with pytest.raises(ImageLoadError, match="larger than"):
        load_image(f"{base}/big.png", max_bytes=100_000)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.img"))
