"""ImageDensity against direct computation, and load_image on good and bad input."""

import http.server
import io
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats

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


def test_pixel_points_is_the_original_method():
    small = load_image(size=32)
    points = pixel_points(small)
    assert len(points) == int((small < 0.5).sum())
    assert 50 < len(points) < 400  # about a hundred-odd points, as the original had


def test_split_is_a_partition():
    pts = np.arange(100, dtype=np.float32).reshape(50, 2)
    tr, va, te = split(pts, seed=1)
    assert (len(tr), len(va), len(te)) == (40, 5, 5)
    together = np.concatenate([tr, va, te])
    assert sorted(map(tuple, together)) == sorted(map(tuple, pts))
    np.testing.assert_array_equal(split(pts, seed=1)[0], tr)


# ---- loading: paths, bytes, URLs and what is refused ---------------------------------


def png_bytes(array: np.ndarray, mode="L") -> bytes:
    buf = io.BytesIO()
    # the mode follows from the array (2D uint8: L; 4 channels: RGBA); fromarray(mode=) is deprecated
    Image.fromarray(array).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_load_from_path_and_bytes(tmp_path):
    arr = np.full((8, 6), 255, np.uint8)
    arr[2:5, 1:3] = 0
    path = tmp_path / "shape.png"
    path.write_bytes(png_bytes(arr))
    from_path = load_image(path)
    np.testing.assert_array_equal(from_path, arr / 255.0)
    np.testing.assert_array_equal(load_image(path.read_bytes()), from_path)
    assert load_image(str(path), size=4).shape == (4, 4)


def test_transparent_pixels_count_as_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # black but fully transparent
    rgba[0, 0] = (0, 0, 0, 255)  # one opaque black pixel
    img = load_image(png_bytes(rgba, mode="RGBA"))
    assert img[0, 0] == 0.0 and img[1:, :].min() == 1.0


def test_missing_file():
    with pytest.raises(ImageLoadError, match="no image file"):
        load_image("/no/such/picture.png")


def test_bytes_that_are_not_an_image():
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"this is plain text, not a PNG")


def test_blank_image_defines_no_distribution():
    white = load_image(png_bytes(np.full((8, 8), 255, np.uint8)))
    with pytest.raises(ValueError, match="blank"):
        ImageDensity(white)
    with pytest.raises(ValueError, match="no pixel is darker"):
        pixel_points(white)


def test_image_over_the_pixel_cap():
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(png_bytes(np.zeros((64, 64), np.uint8)), max_pixels=1000)


def test_file_over_the_byte_cap(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(np.zeros((64, 64), np.uint8)))
    with pytest.raises(ImageLoadError, match="larger than"):
        load_image(path, max_bytes=10)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros(5), np.full((4, 4), 2.0), np.full((2, 2), np.nan)])
def test_arrays_of_the_wrong_shape_or_range(bad):
    with pytest.raises(ValueError, match="image"):
        ImageDensity(bad)


@pytest.mark.parametrize("bad", [np.zeros((5, 3)), np.zeros(4)])
def test_points_of_the_wrong_shape(density, bad):
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        density.log_prob(bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_on_a_closed_port_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match="load_image\\(\\) with no argument"):
        load_image(f"http://127.0.0.1:{free_port()}/moons.png", timeout=2.0)
    assert time.perf_counter() - start < 2.0 + 3.0  # no retries, no hang


@pytest.fixture()
def served(tmp_path):
    """A directory served over HTTP on localhost, in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_download_is_cached_by_content_hash(served, tmp_path, monkeypatch):
    import hashlib

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
    # the server goes away: the cached copy is used, with a warning
    (root / "moon.png").unlink()
    with pytest.warns(UserWarning, match="cached copy"):
        again = load_image(url, timeout=5)
    np.testing.assert_array_equal(again, first)


def test_url_over_the_byte_cap(served, tmp_path, monkeypatch):
    root, base = served
    monkeypatch.setenv("FM_HELPERS_CACHE", str(tmp_path / "cache"))
    (root / "big.png").write_bytes(png_bytes(np.zeros((256, 256), np.uint8)) + b"\0" * 200_000)
    with pytest.raises(ImageLoadError, match="larger than"):
        load_image(f"{base}/big.png", max_bytes=100_000)
