"""log_prob against the closed-form density of conftest.AffineFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from fm_helpers.density import divergence_exact, divergence_hutchinson, log_prob
from fm_helpers.gaussian import GaussianFlow
from fm_helpers.model import VelocityMLP


def test_exact_log_prob_matches_closed_form(affine, noise):
    x1 = affine.push(noise)
    result = log_prob(affine, x1, method="exact")
    lp = np.asarray(result.log_prob)
    np.testing.assert_allclose(result.noise, noise, atol=1e-4)  # the backward flow's end
    assert result.nfe == 6 * result.steps + 1  # Tsit5
    np.testing.assert_allclose(lp, affine.log_prob(x1), atol=1e-4)


def test_gaussian_flow_log_prob_matches_its_closed_form():
    """Chapter 1's closed-form flow (fm_helpers.gaussian): the log-density ODE, solved
    backwards from x1 = mu + s z, gives log N(x1; mu, s^2 I), and the backward flow ends
    at z; its divergence is d (s - 1) / a(t), the trace of its Jacobian."""
    flow = GaussianFlow(jnp.array([1.0, -0.5]), jnp.float32(0.5))
    z = jax.random.normal(jax.random.PRNGKey(1), (300, 2))
    x1 = flow.flow_map(z, 1.0)
    result = log_prob(flow, x1)
    np.testing.assert_allclose(result.log_prob, flow.log_prob(x1), atol=1e-4)
    np.testing.assert_allclose(result.noise, z, atol=1e-4)
    _, div = divergence_exact(flow, x1, jnp.float32(0.3))
    np.testing.assert_allclose(div, flow.divergence(0.3), rtol=1e-5)
    # the flow map solves dx/dt = v_t(x): its time derivative is the velocity
    x_t, dx_dt = jax.jvp(lambda t: flow.flow_map(z, t), (0.4,), (1.0,))
    np.testing.assert_allclose(dx_dt, flow(x_t, 0.4), atol=1e-5)


def test_divergence_exact_on_linear_field():
    a = jnp.array([[0.5, 2.0, 0.0], [-1.0, -3.0, 1.0], [0.2, 0.0, 1.5]])
    field = lambda x, t: x @ a.T + t  # noqa: E731 (Jacobian a everywhere)
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    v, div = divergence_exact(field, x, jnp.float32(0.3))
    np.testing.assert_allclose(div, np.full(5, np.trace(a)), atol=1e-5)
    np.testing.assert_allclose(v, x @ a.T + 0.3, atol=1e-6)


def test_hutchinson_is_unbiased_on_linear_field():
    a = jax.random.normal(jax.random.PRNGKey(4), (4, 4))
    field = lambda x, t: x @ a.T  # noqa: E731
    x = jnp.ones((1, 4))
    probes = jax.random.rademacher(jax.random.PRNGKey(5), (20000, 1, 4), dtype=jnp.float32)
    _, estimate = divergence_hutchinson(field, x, 0.0, probes)
    # Rademacher probes: Var(e^T A e) = (1/2) sum_{i != j} (A_ij + A_ji)^2 <= 2 ||A||_F^2
    stderr = np.sqrt(2 * float(jnp.sum(a**2)) / 20000)
    assert abs(float(estimate[0]) - float(jnp.trace(a))) < 4 * stderr


def test_hutchinson_mean_agrees_with_exact_on_a_network():
    """On a nonlinear field (a random network) the mean of independent Hutchinson runs
    agrees with the exact value within its standard error."""
    velocity = VelocityMLP(widths=(16, 32, 64), rngs=nnx.Rngs(6))
    x = jax.random.normal(jax.random.PRNGKey(7), (8, 2))
    exact = np.asarray(log_prob(velocity, x, num_steps=8).log_prob)
    runs = np.stack([
        np.asarray(log_prob(velocity, x, method="hutchinson", key=jax.random.PRNGKey(100 + k),
                            num_steps=8).log_prob)
        for k in range(48)
    ])
    mean, stderr = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(len(runs))
    assert np.all(stderr > 0), "the estimator should be random"
    assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-5)


def test_hutchinson_needs_key(affine, noise):
    with pytest.raises(ValueError, match="PRNG key"):
        log_prob(affine, noise, method="hutchinson")
    with pytest.raises(ValueError, match="unknown method"):
        log_prob(affine, noise, method="trace")
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        log_prob(affine, noise[0])


def test_antithetic_pair_gives_the_exact_divergence():
    """In 2D the probes (1, 1) and (1, -1) have e1 e2 = +1 and -1: their cross terms
    cancel, and their mean is the trace, on a linear field and on a network."""
    a = jnp.array([[0.3, 2.0], [-1.5, -0.8]])
    network = VelocityMLP(widths=(16, 32, 64), rngs=nnx.Rngs(8))
    fields = [lambda x, t: x @ a.T, network]
    x = jax.random.normal(jax.random.PRNGKey(9), (6, 2))
    pair = jnp.broadcast_to(jnp.array([[1.0, 1.0], [1.0, -1.0]])[:, None, :], (2, 6, 2))
    for field in fields:
        _, exact = divergence_exact(field, x, jnp.float32(0.4))
        _, paired = divergence_hutchinson(field, x, jnp.float32(0.4), pair)
        np.testing.assert_allclose(paired, exact, atol=1e-5)
    # one probe alone is off by the cross terms J12 + J21 = 0.5 on the linear field
    _, single = divergence_hutchinson(fields[0], x, 0.0, pair[:1])
    np.testing.assert_allclose(single, np.full(6, float(jnp.trace(a)) + 0.5), atol=1e-5)


def test_one_probe_log_prob_is_exact_plus_or_minus_the_integrated_cross_terms():
    """With the probe fixed along the path, one probe's log-density in 2D is the exact one
    plus or minus c = int_0^1 (J12 + J21) dt; for J = A0 + t A1, c is the (1, 2) plus
    (2, 1) entries of A0 + A1 / 2."""
    a0 = jnp.array([[-0.5, 1.2], [0.4, 0.3]])
    a1 = jnp.array([[0.2, -0.6], [1.0, -0.4]])
    field = lambda x, t: x @ (a0 + t * a1).T  # noqa: E731
    m = a0 + a1 / 2
    c = float(m[0, 1] + m[1, 0])
    x = jnp.repeat(jax.random.normal(jax.random.PRNGKey(10), (3, 2)), 40, axis=0)
    kw = dict(solver="tsit5", num_steps=16)
    exact = np.asarray(log_prob(field, x, **kw).log_prob)
    one = np.asarray(log_prob(field, x, method="hutchinson", key=jax.random.PRNGKey(11),
                              **kw).log_prob)
    error = one - exact
    assert np.all(np.minimum(np.abs(error - c), np.abs(error + c)) < 1e-4)
    assert np.any(error > 0) and np.any(error < 0), "both signs occur"


def test_seed_study_records_what_the_chapter_computes():
    """fm_helpers.baselines.seed_study (chapter 7's seed study, cached by the benchmarks):
    its seed-0 record is fit + log_prob on the chapter's data, and its numbers agree with
    each other (KL gap = NLL - entropy estimate, margin = KDE's NLL - flow's NLL)."""
    from fm_helpers import baselines, data, model, train

    sizes = dict(n_train=64, n_val=64, n_test=64)
    recipe = dict(steps=2, batch_size=32, learning_rate=3e-3)
    study = baselines.seed_study((0, 1), **sizes, **recipe)
    assert study["settings"] == {"seeds": [0, 1], **sizes, **recipe}
    assert [r["seed"] for r in study["runs"]] == [0, 1]

    truth = data.ImageDensity(data.load_image())
    points = np.asarray(truth.sample(jax.random.PRNGKey(0), 192))
    train_x, val_x, test_x = data.split(points, (1 / 3, 1 / 3, 1 / 3), seed=0)
    h, _ = baselines.choose_bandwidth(train_x, val_x)
    log_q_kde = baselines.kde_log_prob(train_x, test_x, h)
    assert study["kde"]["bandwidth"] == h
    np.testing.assert_allclose(study["kde"]["test_nll"], -log_q_kde.mean(), rtol=1e-12)

    net, _ = train.fit(train_x, seed=0, progress=False, **recipe)
    log_q = np.asarray(log_prob(net, np.concatenate([test_x, train_x])).log_prob,
                       dtype=np.float64)
    first = study["runs"][0]
    np.testing.assert_allclose(first["test_nll"], -log_q[:64].mean(), rtol=1e-6)
    np.testing.assert_allclose(first["train_nll"], -log_q[64:].mean(), rtol=1e-6)
    se = log_q[:64].std(ddof=1) / np.sqrt(64)
    np.testing.assert_allclose(first["test_nll_se"], se, rtol=1e-6)

    mean_log_p = np.asarray(truth.log_prob(test_x), dtype=np.float64).mean()
    for r in study["runs"]:
        np.testing.assert_allclose(r["kl_gap"], r["test_nll"] + mean_log_p, atol=1e-9)
        np.testing.assert_allclose(r["margin_over_kde"],
                                   study["kde"]["test_nll"] - r["test_nll"], atol=1e-9)
    assert study["runs"][0]["test_nll"] != study["runs"][1]["test_nll"], "seeds differ"
