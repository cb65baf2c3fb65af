"""MeanFlow against closed forms: the average velocity of the straight and of the curved
Gaussian flow, finite differences, maps whose densities are known (affine, a fold), and
chapter 8's networks that chapter 9 loads."""

import dataclasses
import json
from importlib.resources import files

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fm_helpers import results
from fm_helpers.gaussian import GaussianFlow, IndependentGaussianFlow, gaussian_log_prob
from fm_helpers.meanflow import (AverageVelocityMLP, EulerMap, Instantaneous, MeanFlowMap,
                                 generate, jacobian_determinant, map_log_prob, meanflow_loss,
                                 meanflow_target, sample_times)
from fm_helpers.model import VelocityMLP
from fm_helpers.sample import sample
from fm_helpers.train import create_model, fit, load_state

MU, S = jnp.array([2.0, -1.0]), 0.5
CURVED = IndependentGaussianFlow(MU, jnp.float32(S))  # its paths bend: u differs from v
velocity, average = CURVED, CURVED.average_velocity


def points(n=256, seed=0):
    kz, kr, kt = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = 1.5 * jax.random.normal(kz, (n, 2))
    r = jax.random.uniform(kr, (n,), minval=0.0, maxval=0.6)
    t = r + jax.random.uniform(kt, (n,), minval=0.1, maxval=0.4)  # a gap of at least 0.1
    return z, r, t


def test_the_closed_form_is_the_average_of_the_velocity():
    z, r, t = points(8)
    x = z  # integrate v from r to t with 2,000 small Euler steps, each point its own times
    for k in range(2000):
        s = r + (t - r) * k / 2000
        x = x + (t - r)[:, None] / 2000 * velocity(x, s)
    np.testing.assert_allclose(x, z + (t - r)[:, None] * average(z, r, t), atol=2e-3)


def test_the_closed_form_flow_map_is_the_solution_of_the_ode():
    z = jax.random.normal(jax.random.PRNGKey(5), (100, 2))
    np.testing.assert_allclose(sample(CURVED, z).samples, CURVED.flow_map(z, 0.0, 1.0), atol=1e-4)
    np.testing.assert_allclose(CURVED.log_prob(CURVED.flow_map(z, 0.0, 1.0)),
                               gaussian_log_prob(CURVED.flow_map(z, 0.0, 1.0), MU, S), atol=1e-5)


def test_the_loss_vanishes_on_the_straight_flow_of_chapter_1():
    """On the straight-line flow the average velocity is the velocity at the start, the
    total derivative along the path is zero, and the residual vanishes; a perturbation of
    u that grows with the gap leaves exactly the residual it predicts."""
    flow = GaussianFlow(MU, jnp.float32(S))
    z, r, t = points()
    v = flow.average_velocity(z, r, r)  # the velocity v_r(z) at each point's own r
    out, target = meanflow_target(flow.average_velocity, z, r, t, v)
    assert float(jnp.max(jnp.abs(out - target))) < 1e-5
    # u + 0.1 (t - r): du/dr falls by 0.1, so the residual is 0.1 (t - r) + 0.1 (t - r)
    wrong = lambda z, r, t: flow.average_velocity(z, r, t) + 0.1 * (t - r)[:, None]  # noqa: E731
    out, target = meanflow_target(wrong, z, r, t, v)
    np.testing.assert_allclose(out - target, 0.2 * (t - r)[:, None] * jnp.ones((1, 2)), atol=1e-5)


def test_the_identity_holds_at_the_true_average_velocity_only():
    """On the curved flow: the MeanFlow residual u - (v + (t - r) du/dr) vanishes for the
    exact u and the exact velocity, and not for a perturbed u."""
    z, r, t = points()
    out, target = meanflow_target(average, z, r, t, velocity(z, r))
    assert float(jnp.max(jnp.abs(out - target))) < 1e-3
    wrong = lambda z, r, t: average(z, r, t) + 0.1 * jnp.sin(z) * (t - r)[:, None]  # noqa: E731
    out, target = meanflow_target(wrong, z, r, t, velocity(z, r))
    assert float(jnp.mean(jnp.abs(out - target))) > 1e-2


def test_the_total_derivative_matches_finite_differences():
    """du/dr along v, from one jax.jvp, against a central difference along the path."""
    model = AverageVelocityMLP(2, rngs=nnx.Rngs(0))
    z, r, t = points(64)
    v = velocity(z, r)
    out, target = meanflow_target(model, z, r, t, v)
    h = 1e-3  # float32: smaller steps lose more to rounding than they gain
    ahead, behind = model(z + h * v, r + h, t), model(z - h * v, r - h, t)
    du_dr = (ahead - behind) / (2 * h)
    np.testing.assert_allclose(target, v + (t - r)[:, None] * du_dr, atol=5e-4)
    np.testing.assert_allclose(out, model(z, r, t), rtol=1e-6)


def test_sample_times():
    r, t = sample_times(jax.random.PRNGKey(0), 20_000, equal_fraction=0.75)
    assert np.all(r <= t) and np.all(r >= 0) and np.all(t <= 1)
    assert abs(float(jnp.mean(r == t)) - 0.75) < 0.02
    r, t = sample_times(jax.random.PRNGKey(0), 1000, equal_fraction=0.0)
    assert not np.any(r == t)


def test_generate_takes_equal_jumps():
    z = jax.random.normal(jax.random.PRNGKey(0), (10, 2))
    np.testing.assert_allclose(generate(average, z, 1), z + average(z, jnp.zeros(10), jnp.ones(10)),
                               rtol=1e-6)
    half = z + 0.5 * average(z, jnp.zeros(10), jnp.full(10, 0.5))
    two = half + 0.5 * average(half, jnp.full(10, 0.5), jnp.ones(10))
    np.testing.assert_allclose(generate(average, z, 2), two, rtol=1e-6)
    # the exact average velocity jumps exactly: one step equals two
    np.testing.assert_allclose(generate(average, z, 1), two, atol=1e-5)
    with pytest.raises(ValueError):
        generate(average, z, 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Affine:
    """u(z, 0, 1) = (A - I) z + b: the one-step map T(z) = A z + b."""

    A: jax.Array
    b: jax.Array

    def __call__(self, z, r, t):
        return z @ (self.A - jnp.eye(2)).T + self.b


def test_the_density_of_an_affine_map():
    A, b = jnp.array([[1.5, 0.4], [-0.3, 0.8]]), jnp.array([0.5, -1.0])
    x = jax.random.normal(jax.random.PRNGKey(1), (50, 2)) @ A.T + b
    got = map_log_prob(MeanFlowMap(Affine(A, b)), x)
    z = np.linalg.solve(np.asarray(A), (np.asarray(x) - np.asarray(b)).T).T
    want = np.asarray(gaussian_log_prob(jnp.asarray(z), 0.0, 1.0)) - np.log(abs(np.linalg.det(A)))
    np.testing.assert_allclose(got.log_prob, want, atol=1e-4)
    assert np.all(got.roots == 1) and not np.any(got.folded) and np.all(got.residual <= 1e-5)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Fold:
    """T(z) = (z_1^2, z_2): every x with x_1 > 0 has two preimages, z_1 = +-sqrt(x_1)."""

    scale: jax.Array

    def __call__(self, z, r, t):
        return jnp.stack([self.scale * z[:, 0] ** 2 - z[:, 0], 0.0 * z[:, 1]], axis=1)


def test_the_density_sums_over_the_fold():
    """q(x) = 2 N(sqrt(x1)) N(x2) / (2 sqrt(x1)): both roots are found and summed."""
    x = jnp.stack([jnp.linspace(0.2, 3.0, 20), jnp.linspace(-1.0, 1.0, 20)], axis=1)
    got = map_log_prob(MeanFlowMap(Fold(jnp.float32(1.0))), x)
    root = np.sqrt(np.asarray(x[:, 0]))
    want = (np.log(2) + np.asarray(gaussian_log_prob(jnp.stack([jnp.asarray(root), x[:, 1]], 1), 0.0, 1.0))
            - np.log(2 * root))
    assert np.all(got.roots == 2) and np.all(got.folded)
    np.testing.assert_allclose(got.log_prob, want, atol=1e-4)
    outside = map_log_prob(MeanFlowMap(Fold(jnp.float32(1.0))), jnp.array([[-0.5, 0.0]]))
    assert outside.roots[0] == 0 and outside.log_prob[0] == -np.inf


def test_the_determinant_of_an_affine_map_and_a_fold():
    A, b = jnp.array([[1.5, 0.4], [-0.3, 0.8]]), jnp.array([0.5, -1.0])
    z = jax.random.normal(jax.random.PRNGKey(2), (20, 2))
    np.testing.assert_allclose(jacobian_determinant(MeanFlowMap(Affine(A, b)), z),
                               np.linalg.det(np.asarray(A)), rtol=1e-5)
    det = jacobian_determinant(MeanFlowMap(Fold(jnp.float32(1.0))), z)  # 2 z_1
    np.testing.assert_allclose(det, 2 * z[:, 0], rtol=1e-5)


def test_map_log_prob_rejects_points_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        map_log_prob(MeanFlowMap(Fold(jnp.float32(1.0))), jnp.zeros(5))


def test_the_euler_map_is_the_euler_solver():
    net = VelocityMLP(2, rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.PRNGKey(3), (50, 2))
    for steps in (1, 2, 4):
        want = sample(net, z, solver="euler", num_steps=steps).samples
        np.testing.assert_allclose(EulerMap(net, steps)(z), want, atol=1e-5)


def test_the_euler_map_of_the_straight_flow_is_exact_in_one_step():
    flow = GaussianFlow(MU, jnp.float32(S))
    z = jax.random.normal(jax.random.PRNGKey(4), (50, 2))
    np.testing.assert_allclose(EulerMap(flow, 1)(z), flow.flow_map(z, 1.0), atol=1e-5)
    got = map_log_prob(EulerMap(flow, 1), flow.flow_map(z, 1.0))
    np.testing.assert_allclose(got.log_prob, flow.log_prob(flow.flow_map(z, 1.0)), atol=1e-4)


def test_from_velocity_starts_as_the_velocity_network():
    net = VelocityMLP(2, widths=(16, 32, 48), time_dim=24, embedding_size=8, rngs=nnx.Rngs(1))
    u = AverageVelocityMLP.from_velocity(net)
    z = jax.random.normal(jax.random.PRNGKey(5), (30, 2))
    r = jax.random.uniform(jax.random.PRNGKey(6), (30,))
    for t in (r, jnp.ones(30), jnp.clip(r + 0.3, 0.0, 1.0)):
        np.testing.assert_allclose(u(z, r, t), net(z, r), atol=1e-6)
    u.layer_in.kernel.value = u.layer_in.kernel.value + 1.0  # a copy: net is untouched
    assert not np.allclose(u(z, r, r), net(z, r))


def test_meanflow_trains_a_one_step_gaussian_map():
    """A short fit with the MeanFlow loss on N(MU, S^2 I) data: one step of the network
    lands near the optimal map MU + S z, far closer than the untrained network, and the
    network's u(x, t, t) is a velocity the multi-step solvers accept."""
    data = np.asarray(MU + S * jax.random.normal(jax.random.PRNGKey(3), (4000, 2)))
    model = AverageVelocityMLP(2, rngs=nnx.Rngs(0))
    trained, history = fit(data, steps=1000, batch_size=256, learning_rate=1e-3, model=model,
                           loss=meanflow_loss, progress=False)  # at 3e-3 it trains unstably
    assert np.all(np.isfinite(history.loss))
    z = jax.random.normal(jax.random.PRNGKey(4), (2000, 2))
    target = np.asarray(MU + S * z)  # the independent flow's map here is the OT map
    err = np.linalg.norm(np.asarray(generate(trained, z, 1)) - target, axis=1).mean()
    err_before = np.linalg.norm(np.asarray(generate(model, z, 1)) - target, axis=1).mean()
    assert err < 0.1 * err_before and err < 0.15, (err, err_before)
    multi = sample(Instantaneous(trained), z).samples
    assert np.linalg.norm(np.asarray(multi) - target, axis=1).mean() < 0.15


def test_fit_rejects_a_custom_loss_with_validation():
    model = AverageVelocityMLP(2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="custom loss"):
        fit(np.zeros((10, 2)), steps=1, model=model, loss=meanflow_loss, val_points=np.zeros((5, 2)),
            progress=False)


def test_the_shipped_weights_are_chapter_8s_models():
    """fm_helpers/assets/chapter8_*.msgpack (scripts/make_chapter8_weights.py) load into
    chapter 8's network, and their one- and two-step Euler distances to their adaptive
    samples, from chapter 8's noise, are those the benchmark published for seed 0."""
    assets = files("fm_helpers") / "assets"
    recipe = json.loads((assets / "chapter8_seed0.json").read_text())["recipe"]
    assert recipe["reflow_keys"] == [11, 12] and recipe["seed"] == 0
    published = next(r for r in results.benchmark_results()["straight"]["runs"]
                     if r["seed"] == 0)["models"]
    noise = jax.random.normal(jax.random.PRNGKey(2), (2500, 2))
    for name, model in [("flow", "independent"), ("reflow2", "reflow 2")]:
        net = load_state(assets / f"chapter8_{name}_seed0.msgpack", create_model(0, 2))
        reference = np.asarray(sample(net, noise).samples)
        for k in (1, 2):
            want = published[model]["euler_distance"][str(k)]
            got = np.linalg.norm(np.asarray(EulerMap(net, k)(noise)) - reference, axis=1).mean()
            assert abs(got - want) < 1e-3 * want, (name, k, got, want)
