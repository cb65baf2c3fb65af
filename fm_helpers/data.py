"""Data: an image turned into a probability distribution on the square [-1, 1]^2.

Taught in chapter 2 ("Data: from an image to a distribution"); the appendix page
"Loading images safely" covers :func:`load_image`'s rules for files, URLs and pixel formats.

The image is read as a piecewise-constant density: pixel (i, j) covers a cell of area
``A = (2 / W) * (2 / H)`` and carries probability mass proportional to its darkness,

.. math::

    P_{ij} = \\frac{1 - I_{ij}}{\\sum_{kl} (1 - I_{kl})}, \\qquad
    p(x) = \\frac{P_{ij}}{A} \\quad \\text{for } x \\text{ in cell } (i, j),

where ``I`` is the grey level in [0, 1] (1 = white). Sampling picks a cell with
probability ``P_ij`` and then a uniform point inside it (dequantization), so the log-density
and entropy of the samples' distribution are known in closed form. The cell is picked by
inverse-CDF sampling in float64 on the host (NumPy), so the probability with which the
sampler picks each cell equals ``P_ij`` up to float64 rounding (``tests/test_data.py``
measures it). The returned coordinates are float32; a coordinate that float32 rounding
would put on the border of the next cell is clipped back into its own cell.

Row 0 of the image is its top edge, so a cell's centre is
``x = -1 + (j + 1/2) 2/W`` and ``y = 1 - (i + 1/2) 2/H``: the picture comes out upright.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageLoadError",
    "ImageDensity",
    "load_image",
    "pixel_points",
    "split",
]

_DEFAULT_IMAGE_NAME = "two_moons.png"
MAX_BYTES = 20 * 1024 * 1024  # a larger download or file is refused
MAX_PIXELS = 16 * 1024 * 1024  # width * height above this is refused (decompression bombs)

Source = Union[None, str, os.PathLike, bytes, bytearray]


class ImageLoadError(ValueError):
    """An image could not be loaded; the message says why and what to do instead."""


def _default_image_path() -> Path:
    """Path of the two-moons image shipped inside the package."""
    return Path(str(resources.files("fm_helpers") / "assets" / _DEFAULT_IMAGE_NAME))


def _cache_dir() -> Path:
    root = os.environ.get("FM_HELPERS_CACHE") or Path.home() / ".cache" / "fm_helpers"
    return Path(root)


def _cached_url(url: str) -> bytes | None:
    """Bytes stored for ``url`` by an earlier download, or None."""
    index = _cache_dir() / "urls.json"
    try:
        digest = json.loads(index.read_text())[url]
        return (_cache_dir() / f"{digest}.img").read_bytes()
    except (OSError, KeyError, ValueError):
        return None


def _store_url(url: str, content: bytes) -> None:
    """Store downloaded bytes under their SHA-256, and remember which URL gave them."""
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(content).hexdigest()
        (cache / f"{digest}.img").write_bytes(content)
        index = cache / "urls.json"
        table = json.loads(index.read_text()) if index.exists() else {}
        table[url] = digest
        index.write_text(json.dumps(table, indent=1))
    except (OSError, ValueError):
        pass  # a cache that cannot be written is not an error


def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    import requests  # imported here: only URLs need it

    fallback = "Call load_image() with no argument to use the image shipped with fm_helpers."
    too_big = f"{url} is larger than {max_bytes} bytes; download a smaller image."
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            response.raise_for_status()
            chunks, total = [], 0
            for chunk in response.iter_content(chunk_size=1 << 16):
                total += len(chunk)
                if total > max_bytes:
                    raise ImageLoadError(too_big)
                chunks.append(chunk)
    except requests.RequestException as err:
        cached = _cached_url(url)
        if cached is not None:
            if len(cached) > max_bytes:
                raise ImageLoadError(too_big) from err
            warnings.warn(f"{url} did not answer ({type(err).__name__}); using the cached copy.")
            return cached
        raise ImageLoadError(
            f"could not download {url} with a timeout of {timeout} s "
            f"({type(err).__name__}: {err}). {fallback}"
        ) from err
    content = b"".join(chunks)
    _store_url(url, content)
    return content


def _read_bytes(source: Source, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """The raw bytes of ``source`` and a short name for error messages."""
    if source is None:
        return _default_image_path().read_bytes(), "the shipped image"
    if isinstance(source, (bytes, bytearray)):
        if len(source) > max_bytes:
            raise ImageLoadError(f"the image bytes exceed {max_bytes} bytes; use a smaller image.")
        return bytes(source), "the given bytes"
    if not isinstance(source, (str, os.PathLike)):
        raise ImageLoadError(
            f"source must be None, a file path, the bytes of an image file or an http(s) URL; "
            f"got {type(source).__name__}. For an array of grey levels, use ImageDensity directly."
        )
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        return _download(text, timeout, max_bytes), text
    path = Path(text)
    if not path.is_file():
        raise ImageLoadError(
            f"no image file at {path}; check the path, or call load_image() for the shipped image."
        )
    if path.stat().st_size > max_bytes:
        raise ImageLoadError(f"{path} is larger than {max_bytes} bytes; use a smaller image.")
    return path.read_bytes(), str(path)


_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339  # 1: unsigned integer, 2: signed integer, 3: float


def _integer_grey(img: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1] of a Pillow integer greyscale image (modes ``I;16*`` and ``I``).

    White is the largest value the file's samples can hold. A TIFF file says how many bits
    its samples have and whether they are signed: white is ``2**bits - 1``, or
    ``2**(bits - 1) - 1`` when signed. Otherwise mode ``I;16`` holds 16-bit samples, and
    so does mode ``I`` from PNG files (opened in mode ``I`` before Pillow 10.3) and PGM
    files: white is 65535. Mode ``I`` from any other format holds 32-bit signed samples:
    white is ``2**31 - 1``. Negative values are clipped to 0 (black) by the caller.
    """
    values = np.asarray(img)
    tags = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tags is not None:
        bits = tags.get(_TIFF_BITS_PER_SAMPLE, 16)
        bits = int(bits[0] if isinstance(bits, tuple) else bits)
        signed = tags.get(_TIFF_SAMPLE_FORMAT, 1)
        signed = int(signed[0] if isinstance(signed, tuple) else signed) == 2
        if img.mode == "I" and bits == 32 and not signed:
            values = values.view(np.uint32)  # Pillow stores unsigned 32-bit samples as int32
        white = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    elif img.mode == "I" and img.format not in ("PNG", "PPM"):
        white = 2**31 - 1
    else:
        white = 65535
    return values.astype(np.float64) / white


def _grey_levels(img: Image.Image) -> np.ndarray:
    """float64 [H, W] grey levels in [0, 1] of a decoded Pillow image, in any mode.

    Colour is turned into grey with the ITU-R 601-2 luma weights that Pillow's own
    ``convert("L")`` uses, ``(299 R + 587 G + 114 B) / 1000``, but computed in float64
    rather than rounded to 8 bits. Transparency is composited on white: a pixel of grey
    level ``g`` and opacity ``a`` in [0, 1] becomes ``a g + (1 - a)``.
    """
    alpha = None
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = _integer_grey(img)
    elif img.mode == "F":  # floating-point samples are taken to be grey levels already
        grey = np.asarray(img, dtype=np.float64)
    elif img.mode in ("1", "L"):
        grey = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    elif img.mode in ("LA", "La"):
        la = np.asarray(img.convert("LA"), dtype=np.float64) / 255.0
        grey, alpha = la[..., 0], la[..., 1]
    else:  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV, ...: Pillow converts them to RGBA
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        grey = (299.0 * rgba[..., 0] + 587.0 * rgba[..., 1] + 114.0 * rgba[..., 2]) / 255_000.0
        alpha = rgba[..., 3] / 255.0
    grey = np.nan_to_num(grey, nan=1.0)  # a NaN sample (float images) counts as white
    if alpha is not None:
        grey = alpha * grey + (1.0 - alpha)
    return np.clip(grey, 0.0, 1.0)


def load_image(
    source: Source = None,
    *,
    size: int | tuple[int, int] | None = None,
    timeout: float = 10.0,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Load an image as grey levels: float32 array [H, W] in [0, 1], where 1 is white.

    Args:
        source: ``None`` for the two-moons image shipped in the package; a file path;
            the encoded bytes of an image; or an ``http(s)`` URL, fetched with
            ``requests`` and stored in a cache on disk under the SHA-256 of its content
            (``$FM_HELPERS_CACHE`` or ``~/.cache/fm_helpers``). When the URL cannot be
            fetched, a copy cached by an earlier call is used, with a warning.
        size: resize to ``size x size`` (an int) or to ``(width, height)``, with a
            Lanczos filter applied to the float grey levels (then clipped to [0, 1]).
        timeout: ``requests``' timeout in seconds: the longest wait to connect and the
            longest wait for each piece of the answer, not a limit on the whole download.
        max_bytes: largest file, bytes or download accepted.
        max_pixels: largest ``width * height`` accepted, checked on the size in the
            file's header, before the pixels are decoded. Pillow's own limit
            (``PIL.Image.MAX_IMAGE_PIXELS``) is checked before it, when the file is
            opened, and refuses larger pictures whatever ``max_pixels`` says.

    Every pixel format that Pillow reads gives the grey levels of the 8-bit greyscale
    version of the same picture (``v / 255`` for 8-bit level ``v``), without rounding to
    8 bits, to within what the file can hold: a lossy file (JPEG, lossy WebP) has
    changed the pixels already, and an 8-bit CIELab file (mode ``LAB``, converted by
    Pillow) stores lightness rather than grey level and comes back within 1.5 levels
    (1.5 / 255).
    Integer greyscale with more than 8 bits (Pillow modes ``I;16`` and ``I``) is
    divided by the largest value its samples can hold: ``2**bits - 1`` for a TIFF file,
    with ``bits`` from its header (``2**31 - 1`` for signed 32-bit samples); 65535 for
    mode ``I;16`` and for 16-bit PNG and PGM files; ``2**31 - 1`` for mode ``I`` from
    other formats. Negative values count as black. Float images (mode ``F``) are taken to
    be grey levels already; values outside [0, 1] are clipped and NaN counts as white.
    Colour (RGB, palette, CMYK, ...) is turned into grey with the ITU-R 601-2 luma weights
    of Pillow's ``convert("L")``, ``(299 R + 587 G + 114 B) / 1000``. Transparency is
    composited on white: grey level ``g`` at opacity ``a`` in [0, 1] becomes
    ``a g + (1 - a)``, so fully transparent pixels are white.

    Raises :class:`ImageLoadError` (a ``ValueError``) with a message that says what was
    wrong: a source of the wrong type, no such file, not an image, too many bytes or
    pixels (``max_pixels`` or Pillow's decompression-bomb limit), pixel data that cannot
    be decoded, a download that failed with no cached copy, or a bad ``size``.
    """
    content, name = _read_bytes(source, timeout, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(content))
            if img.width * img.height > max_pixels:
                raise ImageLoadError(
                    f"{name} has {img.width}x{img.height} pixels, more than max_pixels="
                    f"{max_pixels}; resize it first or raise max_pixels."
                )
            img.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(
            f"{name} is larger than Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS) allows ({err}); resize it first."
        ) from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name} is not an image Pillow can read ({err}).") from err
    except OSError as err:
        raise ImageLoadError(f"{name} could not be decoded as an image ({err}).") from err
    grey = _grey_levels(img)
    if size is not None:
        width, height = (size, size) if isinstance(size, int) else size
        if width < 1 or height < 1:
            raise ImageLoadError(f"size must be positive, got {size!r}.")
        resized = Image.fromarray(grey.astype(np.float32)).resize(
            (int(width), int(height)), Image.Resampling.LANCZOS
        )
        grey = np.asarray(resized, dtype=np.float64)
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(
            f"expected a grey-level image of shape [H, W], got shape {image.shape}; "
            "load_image() returns one."
        )
    if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
        raise ValueError("image values must be finite and lie in [0, 1] (1 = white).")
    return image


def _cell_centres(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every cell centre, each [H, W], in the upright frame of the module docstring."""
    height, width = shape
    xs = -1.0 + (np.arange(width) + 0.5) * 2.0 / width
    ys = 1.0 - (np.arange(height) + 0.5) * 2.0 / height
    return np.meshgrid(xs, ys)


def pixel_points(image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The original notebook's data: centres of the pixels darker than ``threshold``.

    Returns float32 [n, 2] in the same frame as :class:`ImageDensity`, in row-major order
    of the pixels: one point per pixel whose grey level is below ``threshold``, so ``n``
    is the number of such pixels (at most ``H * W``). Raises ``ValueError`` when there is none.
    """
    image = _check_image(image)
    xs, ys = _cell_centres(image.shape)
    dark = image < threshold
    if not dark.any():
        raise ValueError(
            f"no pixel is darker than threshold={threshold}; draw darker shapes or raise the threshold."
        )
    return np.stack([xs[dark], ys[dark]], axis=1).astype(np.float32)


def _generator(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the words of a JAX PRNG key: same key, same stream."""
    words = np.asarray(jax.random.key_data(key), dtype=np.uint32)
    if words.ndim != 1:
        raise ValueError(
            f"expected one JAX PRNG key, e.g. jax.random.PRNGKey(0); got key data of shape "
            f"{words.shape}."
        )
    return np.random.default_rng([int(w) for w in words])


def _float32_order(v: np.ndarray) -> np.ndarray:
    """Integers in the order of the float32 values ``v`` (consecutive floats: consecutive integers)."""
    bits = np.asarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _float32_of_order(k: np.ndarray) -> np.ndarray:
    """The float32 values whose :func:`_float32_order` is ``k``."""
    k = np.asarray(k, dtype=np.int64)
    return np.where(k < 0, (-k) | 0x80000000, k).astype(np.uint32).view(np.float32)


def _float32_bounds(index_of, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest float32 v in [-1, 1] with ``index_of(v) == k``, for k < n.

    ``index_of`` maps float32 values to 0..n-1 and never decreases as v grows; bisection
    over the float32 values between -1 and 1 finds where each index starts.
    """
    k = np.arange(1, n)
    first, last = _float32_order(np.float32(-1.0)), _float32_order(np.float32(1.0))
    lo, hi = np.full(n - 1, first), np.full(n - 1, last)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        right = index_of(_float32_of_order(mid)) >= k
        lo, hi = np.where(right, lo, mid + 1), np.where(right, mid, hi)
    starts = np.concatenate([[first], lo])
    ends = np.concatenate([lo - 1, [last]])
    return _float32_of_order(starts), _float32_of_order(ends)


class ImageDensity:
    """An image as a piecewise-constant probability density on [-1, 1]^2.

    Mass is proportional to darkness ``1 - I``; see the module docstring for the formulas.
    ``probs`` holds ``P_ij`` (float64 [H, W], sums to 1) and ``cell_area`` the area ``A``.
    """

    def __init__(self, image: np.ndarray):
        image = _check_image(image)
        darkness = 1.0 - image
        total = darkness.sum()
        if total <= 0.0:
            raise ValueError(
                "the image is blank (all white), so it defines no distribution; "
                "use an image with dark shapes on a light background."
            )
        self._set_probs(darkness / total, image)

    @classmethod
    def from_probs(cls, probs: np.ndarray) -> "ImageDensity":
        """The density whose cell masses are ``probs`` [H, W] (non-negative, normalised
        here), kept in float64: masses far below an 8-bit grey level stay exact (chapter
        10's tilted densities need them). ``image`` is then only a picture of it."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or not np.all(np.isfinite(probs)) or probs.min() < 0.0:
            raise ValueError(f"probs must be finite, non-negative and [H, W]; got {probs.shape}.")
        if probs.sum() <= 0.0:
            raise ValueError("probs are all zero, so they define no distribution.")
        density = cls.__new__(cls)
        density._set_probs(probs / probs.sum(), 1.0 - probs / probs.max())
        return density

    def _set_probs(self, probs: np.ndarray, image: np.ndarray) -> None:
        self.image = image.astype(np.float32)
        self.height, self.width = probs.shape
        self.probs = probs  # P_ij, sums to 1
        self.cell_area = 4.0 / (self.height * self.width)
        with np.errstate(divide="ignore"):
            self._log_density = np.log(self.probs) - np.log(self.cell_area)  # log P_ij / A
        # Inverse-CDF sampling: cell k is chosen when cdf[k-1] <= u < cdf[k], in float64.
        # Dividing by the last partial sum makes the CDF exactly 1 from the last cell with
        # mass on, and u < 1, so a white cell (cdf[k-1] == cdf[k]) is never chosen,
        # including the white cells at the end.
        cdf = np.cumsum(self.probs.ravel())
        self._cdf = cdf / cdf[-1]
        self._bounds = None  # float32 borders of the cells, computed on the first sample

    @property
    def log_density_image(self) -> np.ndarray:
        """log p on every cell, [H, W] (``-inf`` on white cells)."""
        return self._log_density.copy()

    def _cells(self, u: np.ndarray) -> np.ndarray:
        """Flat index ``i * W + j`` of the cell that each float64 ``u`` in [0, 1) selects."""
        return np.searchsorted(self._cdf, u, side="right")

    def _points_in_cells(self, cells: np.ndarray, jitter: np.ndarray) -> np.ndarray:
        """float32 [n, 2]: the point at fraction ``jitter`` [n, 2] in [0, 1) of each cell.

        Computed in float64 and rounded to float32. Rounding can, rarely, land a coordinate
        on the border of the next cell; such a coordinate is clipped to the nearest float32
        value that :meth:`cell_index` puts in its own cell.
        """
        if self._bounds is None:
            self._bounds = self._float32_cell_bounds()
        x_lo, x_hi, y_lo, y_hi = self._bounds
        rows, cols = np.divmod(np.asarray(cells), self.width)
        x = -1.0 + (cols + jitter[:, 0]) * (2.0 / self.width)
        y = 1.0 - (rows + jitter[:, 1]) * (2.0 / self.height)
        x = np.clip(x.astype(np.float32), x_lo[cols], x_hi[cols])
        y = np.clip(y.astype(np.float32), y_lo[rows], y_hi[rows])
        return np.stack([x, y], axis=1)

    def _float32_cell_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For every column (row), the smallest and largest float32 x (y) that
        :meth:`cell_index` puts in it: x_lo, x_hi [W] and y_lo, y_hi [H]."""
        zeros = lambda v: np.zeros_like(v, dtype=np.float64)  # noqa: E731
        col = lambda v: self.cell_index(np.stack([v, zeros(v)], axis=1))[1]  # noqa: E731
        row_of_minus = lambda v: self.cell_index(np.stack([zeros(v), -v], axis=1))[0]  # noqa: E731
        x_lo, x_hi = _float32_bounds(col, self.width)
        v_lo, v_hi = _float32_bounds(row_of_minus, self.height)  # v = -y, so rows grow with v
        return x_lo, x_hi, -v_hi, -v_lo

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples, float32 [n, 2]: a cell drawn with probability ``P_ij``, then a
        uniform point in it.

        Runs on the host with NumPy (so it cannot be traced by ``jax.jit``): ``key``
        seeds a NumPy generator, so the same key gives the same samples. The cell is drawn
        by inverse-CDF sampling in float64 with a uniform ``u`` of 53 random bits, so each
        cell's probability is ``P_ij`` up to float64 rounding; the point inside the cell is
        uniform up to float32 rounding, and it always lies in that cell (see
        :meth:`cell_index`).
        """
        if int(n) < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        rng = _generator(key)
        cells = self._cells(rng.random(int(n)))  # rng.random: multiples of 2**-53 in [0, 1)
        jitter = rng.random((int(n), 2))
        return jnp.asarray(self._points_in_cells(cells, jitter))

    def cell_index(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and inside-the-square mask of each point of ``x`` [n, 2].

        A point on a border between two cells belongs to the cell to its right (in x) and
        below it (in y); points on the square's right and bottom edges belong to the last
        column and row. Points outside the closed square get the row and column of the
        nearest border cell, and ``False`` in the mask.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape [n, 2], got {x.shape}.")
        inside = np.all(np.abs(x) <= 1.0, axis=1)
        cols = np.clip(np.floor((x[:, 0] + 1.0) * self.width / 2.0), 0, self.width - 1).astype(int)
        rows = np.clip(np.floor((1.0 - x[:, 1]) * self.height / 2.0), 0, self.height - 1).astype(int)
        return rows, cols, inside

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Exact ``log p(x)``, float64 [n], for points [n, 2]; ``-inf`` outside the closed
        square or on white cells."""
        rows, cols, inside = self.cell_index(x)
        return np.where(inside, self._log_density[rows, cols], -np.inf)

    def entropy(self) -> float:
        """Differential entropy in nats: ``H = -sum_ij P_ij log(P_ij / A)``."""
        p = self.probs[self.probs > 0]
        return float(-(p * (np.log(p) - np.log(self.cell_area))).sum())


def split(
    points: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``points`` with a fixed seed and cut them into train, validation and test sets.

    The shuffle is ``np.random.default_rng(seed).permutation``; the training set gets
    ``round(fractions[0] * n)`` points, the validation set ``round(fractions[1] * n)``, and
    the test set the rest.
    """
    points = np.asarray(points)
    if points.ndim != 2:
        raise ValueError(f"expected points of shape [n, d], got {points.shape}.")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    order = np.random.default_rng(seed).permutation(len(points))
    n_train = int(round(fractions[0] * len(points)))
    n_val = int(round(fractions[1] * len(points)))
    shuffled = points[order]
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]
