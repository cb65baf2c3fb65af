from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers import train
from fm_helpers.couplings import exact_ot, reflow_pairs
from fm_helpers.data import ImageDensity, load_image
from fm_helpers.density import log_prob
from fm_helpers.loss import conditional_loss, flow_matching_loss, sample_path
from flax import nnx

from fm_helpers.model import VelocityMLP
from fm_helpers.plot import square_grid
from fm_helpers.train import (
    create_model,
    create_optimizer,
    fit,
    load_state,
    make_train_chunk,
    make_train_step,
    reflow,
    save_state,
)


def leaves(model):
    return jax.tree_util.tree_leaves(nnx.state(model))


@pytest.fixture(scope="module")
def data():
    return np.asarray(ImageDensity(load_image()).sample(jax.random.PRNGKey(0), 4000))


@pytest.fixture(scope="module")
def trained(data):
    return fit(data, steps=600, batch_size=256, learning_rate=3e-3, seed=0, val_points=data[:500],
               progress=False, chunk_size=200)


def test_same_seed_same_parameters(data, trained):
    model, _ = trained
    again, _ = fit(data, steps=600, batch_size=256, learning_rate=3e-3, seed=0, val_points=data[:500],
                   progress=False, chunk_size=200)
    for a, b in zip(leaves(model), leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_different_seed_different_parameters(data, trained):
    other, _ = fit(data, steps=10, seed=1, progress=False)
    first = trained[0].layer_in.kernel.value
    assert not np.array_equal(first, other.layer_in.kernel.value)


def test_a_given_model_is_the_start_and_is_left_unchanged(data):
    """fit(model=m) starts from m's parameters (0 steps of size 0 give them back) and
    returns a new module; m itself keeps its values."""
    start = VelocityMLP(widths=(8, 16, 32), rngs=nnx.Rngs(3))
    before = [np.asarray(x) for x in leaves(start)]
    same, _ = fit(data, steps=5, learning_rate=0.0, model=start, progress=False)
    moved, _ = fit(data, steps=5, learning_rate=1e-2, model=start, progress=False)
    assert same is not start and isinstance(same, VelocityMLP)
    for a, b, c in zip(before, leaves(start), leaves(same)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(moved.layer_in.kernel.value, before[0]) or not np.array_equal(
        moved.layer_out.kernel.value, start.layer_out.kernel.value
    )
    np.testing.assert_array_equal(moved.fourier.W.value, start.fourier.W.value)  # fixed


def test_history(trained):
    _, history = trained
    assert history.loss.shape == (600,) and np.all(np.isfinite(history.loss))
    np.testing.assert_array_equal(history.val_steps, [200, 400, 600])
    assert history.val_loss[-1] < history.val_loss[0]  # it learns
    assert history.loss[-100:].mean() < history.loss[:20].mean()
    # The timed parts are disjoint pieces of the call: compilation plus the time in the
    # compiled chunks (600 / steps_per_second) cannot exceed the wall time of the call.
    assert 0 < history.compile_seconds < history.seconds
    assert history.compile_seconds + 600 / history.steps_per_second <= history.seconds


class _Clock:
    """A fake ``time.perf_counter`` that only the fake programs below move."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _FakeJit:
    """Stands in for ``jax.jit(chunk)``: like JAX it compiles on ``.lower().compile()``
    or on its first call, which costs 1000 fake seconds; running costs 1 ms per step."""

    def __init__(self, clock, num_steps):
        self.clock, self.num_steps, self.compiled = clock, num_steps, False

    def lower(self, *args):
        return SimpleNamespace(compile=self._compile)

    def _compile(self):
        self.clock.now += 1000.0
        self.compiled = True
        return self

    def __call__(self, state, key, data):
        if not self.compiled:
            self._compile()
        self.clock.now += 1e-3 * self.num_steps
        return state, key, jnp.ones(self.num_steps)


@pytest.mark.parametrize("steps, lengths", [(400, 1), (450, 2), (150, 1)])
def test_steps_per_second_excludes_compilation(data, monkeypatch, steps, lengths):
    """Chunks of 200 with a remainder (450), and a single chunk (150): the speed is the
    run time of the chunks alone, and every chunk length is compiled exactly once."""
    clock = _Clock()
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(train, "make_train_chunk", lambda b, n, *rest: _FakeJit(clock, n))
    _, history = fit(data, steps=steps, progress=False, chunk_size=200)
    assert history.steps_per_second == pytest.approx(1000.0)
    assert history.compile_seconds == pytest.approx(1000.0 * lengths)
    assert history.seconds == pytest.approx(1000.0 * lengths + steps * 1e-3)


def test_notebook_progress_bar_is_one_updated_line(data, monkeypatch, capsys):
    """In a Jupyter kernel the bar is one display output that each refresh replaces;
    nothing goes to stdout, where every refresh would become a line of its own."""
    import IPython.display

    shown = []
    handle = SimpleNamespace(update=lambda obj, raw: shown.append(obj["text/plain"]))
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: handle)
    monkeypatch.setattr(train, "_in_jupyter_kernel", lambda: True)
    fit(data, steps=30, batch_size=8, chunk_size=10, progress=True)
    assert capsys.readouterr().out == ""
    assert shown and not any("\n" in line or "\r" in line for line in shown)
    assert shown[-1].startswith("training: 100%") and "30/30" in shown[-1]


def test_progress_bar_outside_jupyter_goes_to_stdout(data, capsys):
    fit(data, steps=20, batch_size=8, chunk_size=10, progress=True)
    assert "20/20" in capsys.readouterr().out


def test_second_fit_reuses_the_compiled_chunk(data, monkeypatch):
    """Same settings, another seed: the state has the same structure, so the second fit
    runs the chunk compiled by the first, without tracing (or compiling) it again."""
    traced = []
    real_make_step = train.make_train_step

    def counting_make_step(batch_size, *rest):
        step = real_make_step(batch_size, *rest)

        def counted(*args):
            traced.append(batch_size)  # runs once per trace, not per step
            return step(*args)

        return counted

    monkeypatch.setattr(train, "make_train_step", counting_make_step)
    for seed in (0, 1):  # batch 12, chunks of 20: sizes no other test uses
        fit(data, steps=40, batch_size=12, chunk_size=20, seed=seed, progress=False)
    assert traced == [12]


def test_same_arguments_same_chunk_function():
    """Defaults filled in or not, positional or by name: one jitted function."""
    first = make_train_chunk(7, 3)
    assert make_train_chunk(7, 3, 0.0) is first
    assert make_train_chunk(7, 3, sigma_min=0.0) is first
    assert make_train_chunk(batch_size=7, num_steps=3) is first
    assert make_train_chunk(7, 3, 0.1) is not first


def test_fit_reuses_a_chunk_compiled_before_it(data, monkeypatch):
    """A chunk run by hand on a model and optimizer made as fit makes them is the
    program fit needs: fit traces (and compiles) nothing new."""
    traced = []
    real_make_step = train.make_train_step

    def counting_make_step(batch_size, *rest):
        step = real_make_step(batch_size, *rest)

        def counted(*args):
            traced.append(batch_size)
            return step(*args)

        return counted

    monkeypatch.setattr(train, "make_train_step", counting_make_step)
    model = create_model(jax.random.PRNGKey(4))
    graphdef, state = nnx.split((model, create_optimizer(model, 2e-3, 30)))
    make_train_chunk(11, 30)(graphdef, state, jax.random.PRNGKey(5), jnp.asarray(data))
    assert traced == [11]  # batch 11, 30 steps, lr 2e-3: settings no other test uses
    fit(data, steps=30, batch_size=11, learning_rate=2e-3, progress=False)
    assert traced == [11]


def test_optimizer_updates_parameters_only():
    """create_optimizer holds Adam's state for the nnx.Param variables alone: the
    Fourier frequencies are not among them, so a step leaves them where they were."""
    model = create_model(0)
    optimizer = create_optimizer(model, 1e-2)
    w = np.asarray(model.fourier.W.value)
    step = make_train_step(32)
    step(model, optimizer, jax.random.PRNGKey(1), jnp.ones((10, 2)))
    np.testing.assert_array_equal(model.fourier.W.value, w)
    assert int(optimizer.step.value) == 1
    assert create_model(0).layer_in.kernel.value.sum() != model.layer_in.kernel.value.sum()


def test_scan_equals_step_loop(data):
    """The fused chunk runs exactly the steps that the per-call loop runs."""
    model = create_model(0)
    graphdef, state = nnx.split((model, create_optimizer(model, 1e-3)))
    key, points = jax.random.PRNGKey(1), jnp.asarray(data)
    # merge reuses the state's variables, which the loop changes in place: give it a copy
    looped, optimizer = nnx.merge(graphdef, jax.tree_util.tree_map(jnp.copy, state))
    step = nnx.jit(make_train_step(64))
    k, losses = key, []
    for _ in range(5):
        k, loss = step(looped, optimizer, k, points)
        losses.append(loss)
    fused, k2, fused_losses = make_train_chunk(64, 5)(graphdef, state, key, points)
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_allclose(fused_losses, np.array(losses), rtol=1e-5)
    for a, b in zip(leaves(looped), jax.tree_util.tree_leaves(fused[0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_step_pairs_the_batch_with_its_coupling(data):
    """A step's loss, computed again by hand from the same keys: data drawn, noise and
    times drawn as flow_matching_loss draws them, the pairs made by the coupling. The
    default keeps them as drawn (flow_matching_loss itself); exact OT pairs them anew,
    and its loss on the same batch is lower."""
    points = jnp.asarray(data)
    key_batch, key_loss = jax.random.split(jax.random.PRNGKey(5), 3)[1:]
    batch = points[jax.random.randint(key_batch, (128,), 0, points.shape[0])]
    path = sample_path(key_loss, batch)
    losses = {}
    for name, coupling in [("default", None), ("exact_ot", exact_ot)]:
        model = create_model(0)
        optimizer = create_optimizer(model, 1e-3)
        step = make_train_step(128) if coupling is None else make_train_step(128, 0.0, coupling)
        losses[name] = float(step(model, optimizer, jax.random.PRNGKey(5), points)[1])
    fresh = create_model(0)
    want_default = flow_matching_loss(fresh, batch, key_loss)
    x0, x1 = exact_ot(None, path.x_0, path.x_1)
    want_ot = conditional_loss(fresh, x0, x1, path.t)
    assert losses["default"] == pytest.approx(float(want_default), rel=1e-6)
    assert losses["exact_ot"] == pytest.approx(float(want_ot), rel=1e-6)
    assert losses["exact_ot"] < losses["default"]


def test_fit_takes_a_coupling(data):
    """Minibatch OT inside fit's compiled chunks (a host callback inside lax.scan): the
    pairs it regresses on are closer, so its training loss is far below the default's
    on the same seed."""
    losses = {}
    for name, extra in [("default", {}), ("exact_ot", {"coupling": exact_ot})]:
        _, history = fit(data, steps=40, batch_size=64, seed=1, chunk_size=20,
                         progress=False, **extra)
        assert np.all(np.isfinite(history.loss))
        losses[name] = history.loss.mean()
    assert losses["exact_ot"] < 0.5 * losses["default"], losses


def test_a_step_on_fixed_pairs_draws_rows_of_both(data):
    """Reflow's step, computed again by hand: the same rows of noise and data, times
    drawn from the loss key, and the conditional loss on those pairs."""
    x1 = jnp.asarray(data[:1000])
    x0 = jax.random.normal(jax.random.PRNGKey(7), x1.shape)
    key_batch, key_loss = jax.random.split(jax.random.PRNGKey(5), 3)[1:]
    idx = jax.random.randint(key_batch, (128,), 0, x1.shape[0])
    t = jax.random.uniform(key_loss, (128,))
    want = conditional_loss(create_model(0), x0[idx], x1[idx], t)
    model = create_model(0)
    _, loss = make_train_step(128)(model, create_optimizer(model, 1e-3),
                                   jax.random.PRNGKey(5), (x0, x1))
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


def test_fit_on_fixed_pairs(data):
    """fit(x1, noise_points=x0) trains on the pairs as given: pairs that are a simple
    function of each other (x1 = x0 + 1) are learnt to a far lower loss than the same
    points with the pairs shuffled, on the same seed."""
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(8), (2000, 2)))
    losses = {}
    for name, x1 in [("paired", x0 + 1.0), ("shuffled", np.roll(x0, 1, axis=0) + 1.0)]:
        _, history = fit(x1, noise_points=x0, steps=200, batch_size=128, seed=1,
                         learning_rate=3e-3, progress=False, chunk_size=100)
        losses[name] = history.loss[-50:].mean()
    assert losses["paired"] < 0.05 * losses["shuffled"], losses


def test_fit_rejects_bad_pairs(data):
    with pytest.raises(ValueError, match="row by row"):
        fit(data[:100], noise_points=data[:99], steps=1, progress=False)
    with pytest.raises(ValueError, match="already paired"):
        fit(data[:100], noise_points=data[:100], steps=1, progress=False,
            coupling=exact_ot)


def test_trained_density_integrates_to_one(trained):
    """A model trained for a few hundred steps is a proper density: its log_prob on a
    grid that covers the support sums to 1 (times the cell area) within 0.02."""
    model, _ = trained
    points, cell_area, _ = square_grid(n=80, lim=2.5)
    lp = np.asarray(log_prob(model, jnp.asarray(points), rtol=1e-4, atol=1e-4).log_prob)
    mass = float(np.exp(lp).sum() * cell_area)
    assert abs(mass - 1.0) < 0.02, mass


def test_save_load_round_trip(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "model.msgpack"
    save_state(path, model)
    loaded = load_state(path, create_model(9))
    for a, b in zip(leaves(model), leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    x = jnp.ones((3, 2))
    np.testing.assert_array_equal(loaded(x, 0.5), model(x, 0.5))
    with pytest.raises(ValueError, match="no saved state"):
        load_state(tmp_path / "missing.msgpack", create_model(9))
    with pytest.raises(ValueError, match="shapes"):
        load_state(path, VelocityMLP(widths=(8, 16, 32), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 2)), np.full((3, 2), np.nan)])
def test_fit_rejects_bad_points(bad):
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        fit(bad, steps=1, progress=False)


def test_fit_rejects_bad_sizes(data):
    with pytest.raises(ValueError, match="positive"):
        fit(data, steps=0, progress=False)


def test_reflow_is_fit_on_the_pairs_of_the_parent():
    """One round of train.reflow equals reflow_pairs then fit from the parent's weights
    with seed + 1, and leaves the parent unchanged."""
    parent = create_model(jax.random.PRNGKey(0), 2)
    before = jax.tree_util.tree_map(np.asarray, nnx.state(parent))
    key = jax.random.PRNGKey(7)
    [(model, history)] = reflow(parent, [key], num_pairs=64, steps=6, batch_size=16,
                                learning_rate=1e-3, seed=3, chunk_size=3)
    x0, x1 = reflow_pairs(parent, key, 64)
    want, _ = fit(x1, noise_points=x0, model=parent, steps=6, batch_size=16,
                  learning_rate=1e-3, seed=4, progress=False, chunk_size=3)
    x = jax.random.normal(jax.random.PRNGKey(8), (10, 2))
    np.testing.assert_array_equal(model(x, 0.3), want(x, 0.3))
    assert len(history.loss) == 6
    after = jax.tree_util.tree_map(np.asarray, nnx.state(parent))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                     jax.tree_util.tree_leaves(after)))


def test_callback_sees_the_network_after_every_chunk(data):
    seen = []

    def record(done, model):
        x = jnp.asarray(data[:4])
        seen.append((done, np.asarray(model(x, 0.5))))

    model, history = train.fit(data, steps=25, batch_size=32, chunk_size=10, seed=3,
                               progress=False, callback=record)
    assert [d for d, _ in seen] == [10, 20, 25]
    np.testing.assert_array_equal(seen[-1][1], np.asarray(model(jnp.asarray(data[:4]), 0.5)))
    assert not np.allclose(seen[0][1], seen[-1][1])  # the first copy is an earlier network
    plain, _ = train.fit(data, steps=25, batch_size=32, chunk_size=10, seed=3, progress=False)
    np.testing.assert_array_equal(np.asarray(plain(jnp.asarray(data[:4]), 0.5)), seen[-1][1])


def test_a_chunk_of_one_step_is_the_step_without_a_loop(data):
    model = VelocityMLP(2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split((model, train.create_optimizer(model, 1e-3)))
    key, points = jax.random.PRNGKey(5), jnp.asarray(data)
    fused = make_train_chunk(64, 2)(graphdef, state, key, points)
    one = make_train_chunk(64, 1)
    first = one(graphdef, state, key, points)
    second = one(graphdef, first[0], first[1], points)
    np.testing.assert_allclose(np.concatenate([first[2], second[2]]), fused[2], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(second[0]), jax.tree_util.tree_leaves(fused[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
