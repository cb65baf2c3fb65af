"""Data: an image turned into a probability distribution on the square [-1, 1]^2.

Taught in chapter 2 ("Data: from an image to a distribution").

The image is read as a piecewise-constant density: pixel (i, j) covers a cell of area
``A = (2 / W) * (2 / H)`` and carries probability mass proportional to its darkness,

.. math::

    P_{ij} = \\frac{1 - I_{ij}}{\\sum_{kl} (1 - I_{kl})}, \\qquad
    p(x) = \\frac{P_{ij}}{A} \\quad \\text{for } x \\text{ in cell } (i, j),

where ``I`` is the grey level in [0, 1] (1 = white). Sampling picks a cell with
probability ``P_ij`` and then a uniform point inside it (dequantization), so samples
follow ``p`` exactly and the log-density and entropy are known in closed form.

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
    "DEFAULT_IMAGE_NAME",
    "ImageLoadError",
    "ImageDensity",
    "default_image_path",
    "load_image",
    "pixel_points",
    "split",
]

DEFAULT_IMAGE_NAME = "two_moons.png"
MAX_BYTES = 20 * 1024 * 1024  # a larger download or file is refused
MAX_PIXELS = 16 * 1024 * 1024  # width * height above this is refused (decompression bombs)

Source = Union[None, str, os.PathLike, bytes, bytearray]


class ImageLoadError(ValueError):
    """An image could not be loaded; the message says why and what to do instead."""


def default_image_path() -> Path:
    """Path of the two-moons image shipped inside the package."""
    return Path(str(resources.files("fm_helpers") / "assets" / DEFAULT_IMAGE_NAME))


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
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            response.raise_for_status()
            chunks, total = [], 0
            for chunk in response.iter_content(chunk_size=1 << 16):
                total += len(chunk)
                if total > max_bytes:
                    raise ImageLoadError(
                        f"{url} is larger than {max_bytes} bytes; download a smaller image."
                    )
                chunks.append(chunk)
    except requests.RequestException as err:
        cached = _cached_url(url)
        if cached is not None:
            warnings.warn(f"{url} did not answer ({type(err).__name__}); using the cached copy.")
            return cached
        raise ImageLoadError(
            f"could not download {url} within {timeout} s ({type(err).__name__}: {err}). {fallback}"
        ) from err
    content = b"".join(chunks)
    _store_url(url, content)
    return content


def _read_bytes(source: Source, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """The raw bytes of ``source`` and a short name for error messages."""
    if source is None:
        return default_image_path().read_bytes(), "the shipped image"
    if isinstance(source, (bytes, bytearray)):
        if len(source) > max_bytes:
            raise ImageLoadError(f"the image bytes exceed {max_bytes} bytes; use a smaller image.")
        return bytes(source), "the given bytes"
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
            ``requests`` under ``timeout`` and ``max_bytes`` and cached on disk by the
            SHA-256 of its content (``$FM_HELPERS_CACHE`` or ``~/.cache/fm_helpers``).
        size: resize to ``size x size`` (an int) or to ``(width, height)``.
        timeout: seconds to wait for a URL before giving up.
        max_bytes: largest file or download accepted.
        max_pixels: largest ``width * height`` accepted, checked before decoding.

    Transparent pixels count as white. Raises :class:`ImageLoadError` (a ``ValueError``)
    with a message that says what was wrong.
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
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{name} is not an image Pillow can read ({err}).") from err
    except OSError as err:
        raise ImageLoadError(f"{name} could not be decoded as an image ({err}).") from err
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    grey = Image.alpha_composite(white, rgba).convert("L")
    if size is not None:
        width, height = (size, size) if isinstance(size, int) else size
        if width < 1 or height < 1:
            raise ImageLoadError(f"size must be positive, got {size!r}.")
        grey = grey.resize((int(width), int(height)), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(grey, dtype=np.float32) / 255.0, 0.0, 1.0)


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

    Returns float32 [n, 2] in the same frame as :class:`ImageDensity`. One point per dark
    pixel, so a 32x32 image yields at most 1024 points (about a hundred for two moons).
    """
    image = _check_image(image)
    xs, ys = _cell_centres(image.shape)
    dark = image < threshold
    if not dark.any():
        raise ValueError(
            f"no pixel is darker than threshold={threshold}; draw darker shapes or raise the threshold."
        )
    return np.stack([xs[dark], ys[dark]], axis=1).astype(np.float32)


class ImageDensity:
    """An image as a piecewise-constant probability density on [-1, 1]^2.

    Mass is proportional to darkness ``1 - I``; see the module docstring for the formulas.
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
        self.image = image.astype(np.float32)
        self.height, self.width = image.shape
        self.probs = darkness / total  # P_ij, sums to 1
        self.cell_area = 4.0 / (self.height * self.width)
        with np.errstate(divide="ignore"):
            self._log_density = np.log(self.probs) - np.log(self.cell_area)  # log P_ij / A
        # Inverse-CDF sampling: cell k is chosen when cdf[k-1] <= u < cdf[k]. Computed in
        # float64, so a white cell (zero mass) has cdf[k-1] == cdf[k] and is never chosen.
        cdf = np.cumsum(self.probs.ravel())
        cdf[-1] = 1.0
        self._cdf = jnp.asarray(cdf, dtype=jnp.float32)

    @property
    def log_density_image(self) -> np.ndarray:
        """log p on every cell, [H, W] (``-inf`` on white cells)."""
        return self._log_density.copy()

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact samples [n, 2]: a cell drawn with probability ``P_ij``, then a uniform point in it."""
        if int(n) < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        key_cell, key_jitter = jax.random.split(key)
        u_cell = jax.random.uniform(key_cell, (int(n),))
        cells = jnp.minimum(jnp.searchsorted(self._cdf, u_cell, side="right"), self._cdf.size - 1)
        rows, cols = cells // self.width, cells % self.width
        u = jax.random.uniform(key_jitter, (int(n), 2))
        x = -1.0 + (cols + u[:, 0]) * (2.0 / self.width)
        y = 1.0 - (rows + u[:, 1]) * (2.0 / self.height)
        return jnp.stack([x, y], axis=1)

    def cell_index(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and inside-the-square mask of each point of ``x`` [n, 2]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape [n, 2], got {x.shape}.")
        inside = np.all(np.abs(x) <= 1.0, axis=1)
        cols = np.clip(np.floor((x[:, 0] + 1.0) * self.width / 2.0), 0, self.width - 1).astype(int)
        rows = np.clip(np.floor((1.0 - x[:, 1]) * self.height / 2.0), 0, self.height - 1).astype(int)
        return rows, cols, inside

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Exact ``log p(x)`` for points [n, 2]; ``-inf`` outside the square or on white cells."""
        rows, cols, inside = self.cell_index(x)
        return np.where(inside, self._log_density[rows, cols], -np.inf)

    def entropy(self) -> float:
        """Differential entropy in nats: ``H = -sum_ij P_ij log(P_ij / A)``."""
        p = self.probs[self.probs > 0]
        return float(-(p * (np.log(p) - np.log(self.cell_area))).sum())


def split(
    points: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``points`` with a fixed seed and cut them into train, validation and test sets."""
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
