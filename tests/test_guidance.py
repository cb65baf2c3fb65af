"""fm_helpers.guidance: the labelled mixture, the conditional network, label dropout, the
guided field, and the guided ODE's density against a direct change of variables."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.optimize import linear_sum_assignment

from fm_helpers import density, guidance, train
from fm_helpers.couplings import squared_distances
from fm_helpers.gaussian import IndependentGaussianFlow, gaussian_log_prob
from fm_helpers.loss import conditional_loss


@pytest.fixture(scope="module")
def shapes():
    return guidance.LabelledMixture.three_shapes()


@pytest.fixture(scope="module")
def model():
    return guidance.ConditionalVelocityMLP(num_classes=3, rngs=nnx.Rngs(0))


def _centres(density_):
    """The centre of every pixel, [H W, 2], row by row."""
    h, w = density_.probs.shape
    ys = 1 - (np.arange(h) + 0.5) * 2 / h
    xs = -1 + (np.arange(w) + 0.5) * 2 / w
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def test_every_density_integrates_to_one(shapes):
    centres = _centres(shapes.classes[0])
    area = shapes.classes[0].cell_area
    for c in range(3):
        assert np.exp(shapes.log_prob(centres, c)).sum() * area == pytest.approx(1, abs=1e-9)
        for w in (0.0, 1.5, 5.0):
            tilted = shapes.tilted(c, w)
            assert np.exp(tilted.log_prob(centres)).sum() * area == pytest.approx(1, abs=1e-9)
    assert np.exp(shapes.log_prob(centres)).sum() * area == pytest.approx(1, abs=1e-9)


def test_mixture_is_the_weighted_sum_and_posterior_is_bayes(shapes):
    x, _ = shapes.sample(jax.random.PRNGKey(3), 500)
    by_hand = np.log(sum(w * np.exp(d.log_prob(x)) for w, d in zip(shapes.weights, shapes.classes)))
    np.testing.assert_allclose(shapes.log_prob(x), by_hand, rtol=1e-12)
    np.testing.assert_allclose(shapes.mixture().log_prob(x), by_hand, rtol=1e-9)
    post = shapes.posterior(x)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(post[:, 1], shapes.weights[1] * np.exp(shapes.log_prob(x, 1) - by_hand),
                               rtol=1e-9)


def test_sampler_matches_class_weights_and_classes(shapes):
    n = 40_000
    x, c = shapes.sample(jax.random.PRNGKey(0), n)
    shares = np.bincount(c, minlength=3) / n
    se = np.sqrt(shapes.weights * (1 - shapes.weights) / n)
    assert np.all(np.abs(shares - shapes.weights) < 4 * se), shares
    assert np.all(np.isfinite(shapes.log_prob(x, c)))  # each point lies in its own class
    x2, c2 = shapes.sample(jax.random.PRNGKey(0), n)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(c, c2)


def test_classes_overlap_in_part(shapes):
    # Guidance needs contested ground: where p(c | x) < 0.9 lies part of each class's
    # mass, but not most of it.
    x, c = shapes.sample(jax.random.PRNGKey(1), 20_000)
    post = shapes.posterior(x)[np.arange(len(c)), c]
    contested = np.array([np.mean(post[c == k] < 0.9) for k in range(3)])
    assert np.all((contested > 0.1) & (contested < 0.7)), contested


def test_tilted_density_is_the_normalised_product(shapes):
    c, w = 2, 3.0
    tilted = shapes.tilted(c, w)
    np.testing.assert_allclose(shapes.tilted(c, 1.0).probs, shapes.classes[c].probs, rtol=1e-12)
    np.testing.assert_allclose(shapes.tilted(c, 0.0).probs, shapes.mixture().probs, rtol=1e-12)
    pc, p = shapes.classes[c].probs, shapes.mixture().probs
    on = pc > 0
    product = np.zeros_like(pc)
    product[on] = pc[on] ** w * p[on] ** (1 - w)
    np.testing.assert_allclose(tilted.probs, product / product.sum(), rtol=1e-9)
    with pytest.raises(ValueError, match="w must be"):
        shapes.tilted(c, -1.0)


def test_labelled_mixture_rejects_bad_input(shapes):
    with pytest.raises(ValueError, match="sum to 1"):
        guidance.LabelledMixture(shapes.classes, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="one weight each"):
        guidance.LabelledMixture(shapes.classes, (0.5, 0.5))


def test_conditional_network_reads_the_class(model):
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 2))
    out = [model(x, 0.3, c) for c in range(4)]  # 3 classes and the null class
    assert all(o.shape == (7, 2) for o in out)
    assert model.null == 3 and model.class_embed.embedding.value.shape[0] == 4
    for a in range(4):
        for b in range(a):
            assert not np.allclose(out[a], out[b])
    per_row = model(x, 0.3, jnp.array([0, 1, 2, 3, 0, 1, 2]))
    np.testing.assert_allclose(per_row[1], out[1][1], rtol=1e-6)
    np.testing.assert_allclose(per_row[3], out[3][3], rtol=1e-6)


def test_guided_field_is_unconditional_at_0_and_conditional_at_1(model):
    x = jax.random.normal(jax.random.PRNGKey(1), (9, 2))
    t = jnp.float32(0.6)
    v_c, v_null = model(x, t, 2), model(x, t, model.null)
    # Equal up to rounding only: the guided field calls the network on 2n rows at once.
    np.testing.assert_allclose(guidance.GuidedVelocity(model, 2, 0.0)(x, t), v_null, atol=1e-6)
    np.testing.assert_allclose(guidance.GuidedVelocity(model, 2, 1.0)(x, t), v_c, atol=1e-6)
    np.testing.assert_allclose(guidance.GuidedVelocity(model, 2, 3.0)(x, t),
                               v_null + 3 * (v_c - v_null), atol=1e-5)
    w = jnp.linspace(0, 4, 9)
    per_row = guidance.GuidedVelocity(model, 2, w)(x, t)
    np.testing.assert_allclose(per_row, v_null + w[:, None] * (v_c - v_null), atol=1e-5)
    # The one-class field is the network itself, for a class and for the null class.
    np.testing.assert_array_equal(guidance.ConditionalVelocity(model, 2)(x, t), v_c)
    np.testing.assert_array_equal(guidance.ConditionalVelocity(model, model.null)(x, t), v_null)


def test_label_dropout_loss(model):
    key = jax.random.PRNGKey(4)
    x1 = jax.random.normal(jax.random.PRNGKey(5), (64, 2))
    labels = jnp.arange(64) % 3
    key_x0, key_t, _ = jax.random.split(key, 3)
    x0 = jax.random.normal(key_x0, x1.shape)
    t = jax.random.uniform(key_t, (64,))
    for p, seen in ((0.0, labels), (1.0, jnp.full(64, model.null))):
        by_hand = conditional_loss(lambda x, s: model(x, s, seen), x0, x1, t)
        got = float(guidance.LabelDropoutLoss(p)(model, (x1, labels), key))
        assert got == pytest.approx(float(by_hand), rel=1e-6)
    dropped = guidance.drop_labels(key, jnp.zeros(20_000, jnp.int32), 0.2, 3)
    assert float(jnp.mean(dropped == 3)) == pytest.approx(0.2, abs=0.012)
    assert guidance.LabelDropoutLoss(0.2) == guidance.LabelDropoutLoss(0.2)  # reuses compiled chunks


def test_fit_with_labels_is_reproducible_and_checks_them(shapes):
    x, c = shapes.sample(jax.random.PRNGKey(0), 2_000)
    runs = [train.fit(x, labels=c, loss=guidance.LabelDropoutLoss(0.2), steps=30, batch_size=64,
                      model=guidance.ConditionalVelocityMLP(num_classes=3, rngs=nnx.Rngs(0)),
                      progress=False, chunk_size=15) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][1].loss, runs[1][1].loss)
    assert runs[0][1].loss[-10:].mean() < runs[0][1].loss[:10].mean()
    with pytest.raises(ValueError, match="labels must be integers"):
        train.fit(x, labels=c[:10], loss=guidance.LabelDropoutLoss(0.2), steps=2, progress=False,
                  model=guidance.ConditionalVelocityMLP(num_classes=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="labels must be integers"):
        train.fit(x, labels=c, steps=2, progress=False)  # no loss that reads them


def test_ot_within_classes_pairs_inside_each_class():
    key0, key1 = jax.random.split(jax.random.PRNGKey(2))
    x0 = jax.random.normal(key0, (90, 2))
    x1 = jax.random.normal(key1, (90, 2)) * 0.5 + 1.0
    labels = jnp.arange(90) % 3
    perm = np.asarray(jax.jit(guidance.ot_within_classes)(x0, x1, labels))
    assert sorted(perm) == list(range(90))
    assert np.all(np.asarray(labels)[perm] == np.asarray(labels))  # no pair crosses classes
    for k in range(3):  # and within each class the pairing is the optimal assignment
        rows = np.flatnonzero(np.asarray(labels) == k)
        cost = np.asarray(squared_distances(x0[rows], x1[rows]))
        r, col = linear_sum_assignment(cost)
        got = float(jnp.sum((x0[rows] - x1[perm[rows]]) ** 2))
        assert got == pytest.approx(cost[r, col].sum(), rel=1e-5)
    batch = (x1, labels)
    with_ot = guidance.LabelDropoutLoss(0.0, ot_within_classes=True)
    net = guidance.ConditionalVelocityMLP(num_classes=3, rngs=nnx.Rngs(0))
    key = jax.random.PRNGKey(7)
    key_x0, key_t, _ = jax.random.split(key, 3)
    noise = jax.random.normal(key_x0, x1.shape)
    t = jax.random.uniform(key_t, (90,))
    paired = x1[np.asarray(guidance.ot_within_classes(noise, x1, labels))]
    by_hand = conditional_loss(lambda x, s: net(x, s, labels), noise, paired, t)
    assert float(with_ot(net, batch, key)) == pytest.approx(float(by_hand), rel=1e-6)


def test_precision_and_coverage(shapes):
    disc = shapes.classes[0]
    x = np.asarray(disc.sample(jax.random.PRNGKey(0), 2_000))
    assert guidance.precision(disc, x) == 1.0
    assert guidance.precision(disc, np.array([[0.95, -0.95], [0.0, 0.3]])) == 0.5
    assert guidance.coverage(disc, _centres(disc)) == pytest.approx(1.0)
    assert guidance.coverage(disc, x) > 0.99
    assert guidance.coverage(disc, np.array([[0.95, -0.95]])) == 0.0
    with pytest.raises(ValueError, match="must divide"):
        guidance.coverage(disc, x, block=5)


# ------------------------------------------------- the guided ODE on Gaussian classes


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GaussianClasses:
    """Classes N(mu_c, s_c^2 I) with weights pi_c, as a conditional "network" v(x, t, c)
    known in closed form: class c's Flow Matching field is IndependentGaussianFlow's, and
    the null class's is the mixture's, sum_c p_t(c | x) v_c(x, t)."""

    mu: jax.Array  # [K, d]
    s: jax.Array  # [K]
    weights: jax.Array  # [K]

    @property
    def null(self) -> int:
        return self.weights.shape[0]

    def __call__(self, x, t, c):
        flows = [IndependentGaussianFlow(self.mu[k], self.s[k]) for k in range(self.null)]
        fields = jnp.stack([f(x, t) for f in flows])  # [K, n, d]
        log_joint = jnp.stack([jnp.log(self.weights[k]) + f.log_prob(x, t) for k, f in enumerate(flows)])
        post = jax.nn.softmax(log_joint, axis=0)  # p_t(c | x), [K, n]
        mixture = jnp.sum(post[..., None] * fields, axis=0)
        c = jnp.broadcast_to(c, (x.shape[0],))
        own = jnp.take_along_axis(fields, jnp.minimum(c, self.null - 1)[None, :, None], axis=0)[0]
        return jnp.where((c == self.null)[:, None], mixture, own)


def _flow_map(velocity, z, num_steps=400):
    """The flow's map from t = 0 to t = 1 by classical Runge-Kutta, for one point z [d]."""
    h = 1.0 / num_steps

    def step(x, k):
        t = k * h
        f = lambda y, s: velocity(y[None], s)[0]  # noqa: E731
        a = f(x, t)
        b = f(x + h / 2 * a, t + h / 2)
        c = f(x + h / 2 * b, t + h / 2)
        d = f(x + h * c, t + h)
        return x + h / 6 * (a + 2 * b + 2 * c + d), None

    return jax.lax.scan(step, z, jnp.arange(num_steps, dtype=jnp.float32))[0]


def test_guided_density_is_the_change_of_variables_of_its_map():
    classes = GaussianClasses(mu=jnp.array([[1.0, 0.5], [-0.8, 0.2], [0.2, -1.0]]),
                              s=jnp.array([0.4, 0.5, 0.3]), weights=jnp.array([0.5, 0.3, 0.2]))
    guided = guidance.GuidedVelocity(classes, 1, 2.5)
    z = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    T = jax.jit(lambda zz: _flow_map(guided, zz))
    x = jax.vmap(T)(z)
    jac = jax.vmap(jax.jacfwd(T))(z)
    direct = gaussian_log_prob(z, 0.0, 1.0) - jnp.log(jnp.abs(jnp.linalg.det(jac)))
    solved = density.log_prob(guided, x, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(solved.noise, z, atol=1e-4)
    np.testing.assert_allclose(solved.log_prob, direct, atol=1e-3)
    # At w = 1 the guided ODE is class 1's own flow, whose density is known in closed form.
    x1 = jax.vmap(jax.jit(lambda zz: _flow_map(guidance.GuidedVelocity(classes, 1, 1.0), zz)))(z)
    exact = gaussian_log_prob(x1, classes.mu[1], classes.s[1])
    np.testing.assert_allclose(density.log_prob(guidance.GuidedVelocity(classes, 1, 1.0), x1).log_prob,
                               exact, atol=1e-3)
