"""Shared fixtures: an analytic flow whose solution and density are known in closed form."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", False)


class AffineFlow:
    """A flow carrying N(0, I) at t = 0 to N(mu, s^2 I) at t = 1 along curved paths:

    x_t = a(t) x_0 + b(t) mu with a(t) = s^t and b(t) = t^2, so
    v_t(x) = log(s) (x - b(t) mu) + 2 t mu,  div v_t = d log(s),
    and the exact map is x_1 = s x_0 + mu; log p_1 = log N(x_1; mu, s^2 I).
    The speed along a path changes with t, so no solver is exact (on straight paths at
    constant speed, Euler would be).
    """

    def __init__(self, mu, s):
        self.mu = jnp.asarray(mu, dtype=jnp.float32)
        self.s = float(s)

    def __call__(self, x, t):
        return jnp.log(self.s) * (x - t**2 * self.mu) + 2.0 * t * self.mu

    def push(self, x0):
        return self.s * x0 + self.mu

    def log_prob(self, x1):
        x1 = np.asarray(x1, dtype=np.float64)
        d = x1.shape[1]
        z = (x1 - np.asarray(self.mu)) / self.s
        return -0.5 * (z**2).sum(1) - d * np.log(self.s) - 0.5 * d * np.log(2 * np.pi)


@pytest.fixture(scope="session")
def affine():
    return AffineFlow(mu=[1.5, -0.5], s=0.4)


@pytest.fixture(scope="session")
def noise():
    return jax.random.normal(jax.random.PRNGKey(0), (256, 2))


# ---- a web server on 127.0.0.1, so that URL tests need no network ---------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request on stderr; only this class
        pass


@pytest.fixture()
def served(tmp_path):
    """A directory served over HTTP on localhost, in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
