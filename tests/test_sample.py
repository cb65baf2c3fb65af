"""Solvers against the closed-form flow of conftest.AffineFlow."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.sample import FIRST_STEP, SOLVERS, sample

# Largest error allowed after 20 fixed steps, per solver. The errors seen were
# euler 7e-2, heun 1.5e-3, midpoint 9e-4, tsit5 5e-7: a first-order method is
# loose, a fifth-order one is at float32 round-off.
FIXED_TOL = {"euler": 0.1, "heun": 3e-3, "midpoint": 3e-3, "tsit5": 1e-5, "dopri5": 1e-5}
ADAPTIVE_TOL = 5e-5  # rtol = atol = 1e-5 on values of order 1


def max_error(result, affine, noise):
    return float(np.abs(np.asarray(result.samples) - np.asarray(affine.push(noise))).max())


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_fixed_step_solvers_land_on_closed_form(solver, affine, noise):
    result = sample(affine, noise, solver=solver, num_steps=20)
    assert max_error(result, affine, noise) < FIXED_TOL[solver]


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "heun", "midpoint"])
def test_adaptive_solvers_land_on_closed_form(solver, affine, noise):
    result = sample(affine, noise, solver=solver)
    assert max_error(result, affine, noise) < ADAPTIVE_TOL


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_convergence_order(solver, order, affine, noise):
    # halving the step divides the error by about 2^order
    coarse = max_error(sample(affine, noise, solver=solver, num_steps=16), affine, noise)
    fine = max_error(sample(affine, noise, solver=solver, num_steps=32), affine, noise)
    assert 2 ** order * 0.8 < coarse / fine < 2 ** order * 1.25


class CountingField:
    """Wraps a velocity and records the time t of every call the compiled solver makes."""

    def __init__(self, velocity):
        self.velocity, self.times = velocity, []

    @property
    def calls(self):
        return len(self.times)

    def _tick(self, t):
        self.times.append(float(t))

    def __call__(self, x, t):
        jax.debug.callback(self._tick, t)
        return self.velocity(x, t)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_fixed_step_nfe_is_counted_evaluations(solver, affine, noise):
    field = CountingField(affine)
    result = sample(field, noise, solver=solver, num_steps=7)
    jax.effects_barrier()
    spec = SOLVERS[solver]
    assert result.steps == 7
    assert result.nfe == field.calls == spec.evals_per_step * 7 + spec.evals_at_start
    # stages x steps for the solvers without a reusable last stage
    if spec.evals_at_start == 0:
        assert result.nfe == {"euler": 1, "heun": 2, "midpoint": 2}[solver] * 7


@pytest.mark.parametrize("solver", ["tsit5", "dopri5"])
def test_adaptive_nfe_is_counted_evaluations(solver, affine, noise):
    field = CountingField(affine)
    result = sample(field, noise, solver=solver, rtol=1e-6, atol=1e-6)
    jax.effects_barrier()
    assert result.nfe == field.calls > 0


def test_adaptive_first_step(affine, noise):
    # Tsit5: one evaluation at t = 0, then six stages inside the first step [0, FIRST_STEP]
    field = CountingField(affine)
    sample(field, noise, solver="tsit5")
    jax.effects_barrier()
    assert max(field.times[:7]) == pytest.approx(FIRST_STEP)
    assert field.times[7] > FIRST_STEP


def test_adaptive_steps_are_shared_by_the_batch(affine, noise):
    # The controller's RMS runs over the whole batch: a point that needs fewer steps
    # alone takes the batch's steps when solved with the others.
    alone = [sample(affine, noise[i : i + 1]).nfe for i in range(8)]
    together = sample(affine, noise[:8]).nfe
    assert min(alone) < together


SETTINGS = {"scale": 1.0}


def velocity_reading_a_global(x, t):
    return SETTINGS["scale"] * x


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ScaledVelocity:
    scale: jax.Array  # a pytree leaf: an input of the compiled solve

    def __call__(self, x, t):
        return self.scale * x


def test_a_global_read_is_frozen_at_the_first_call(noise):
    # dx/dt = c x with 4 Euler steps gives x(1) = (1 + c / 4)^4 x(0)
    def euler4(velocity):
        return np.asarray(sample(velocity, noise, solver="euler", num_steps=4).samples)

    expected = {c: (1 + c / 4) ** 4 * np.asarray(noise) for c in (1.0, 2.0)}
    try:
        SETTINGS["scale"] = 1.0
        first = euler4(velocity_reading_a_global)
        SETTINGS["scale"] = 2.0
        second = euler4(velocity_reading_a_global)
    finally:
        SETTINGS["scale"] = 1.0
    np.testing.assert_allclose(first, expected[1.0], rtol=1e-5)
    np.testing.assert_allclose(second, expected[1.0], rtol=1e-5)  # not expected[2.0]
    # passed in as an array field, the value is an input and is not frozen
    for c in (1.0, 2.0):
        got = euler4(ScaledVelocity(jnp.asarray(c)))
        np.testing.assert_allclose(got, expected[c], rtol=1e-5)


def test_trajectory_endpoints(affine, noise):
    result = sample(affine, noise, num_steps=10, save_trajectory=11)
    assert result.trajectory.shape == (11,) + noise.shape
    np.testing.assert_allclose(result.trajectory[0], noise, atol=1e-6)
    np.testing.assert_allclose(result.trajectory[-1], result.samples, atol=1e-6)
    np.testing.assert_allclose(result.ts, np.linspace(0.0, 1.0, 11), atol=1e-7)
    assert sample(affine, noise, num_steps=4, save_trajectory=True).trajectory.shape[0] == 51
    assert sample(affine, noise, num_steps=4, save_trajectory=2).ts.shape == (2,)


def test_bad_arguments(affine, noise):
    with pytest.raises(TypeError):  # not a field of SolverOptions
        sample(affine, noise, solvr="euler")
    with pytest.raises(ValueError, match="unknown solver"):
        sample(affine, noise, solver="rk4")
    with pytest.raises(ValueError, match="give num_steps"):
        sample(affine, noise, solver="euler")
    with pytest.raises(ValueError, match="positive"):
        sample(affine, noise, solver="euler", num_steps=0)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        sample(affine, jnp.zeros(3))
    with pytest.raises(ValueError, match="k >= 2"):
        sample(affine, noise, num_steps=4, save_trajectory=1)


def test_a_network_is_a_velocity_and_does_not_recompile(noise):
    """An NNX module is a pytree whose leaves are its arrays: passed to sample, its
    parameters are inputs of the compiled solve. A second network of the same structure,
    with other parameters, runs that solve again (the velocity is not traced again) and
    gets its own numbers; a model changed in place is solved with its new values."""
    from flax import nnx

    from fm_helpers.model import VelocityMLP

    first, second = (VelocityMLP(widths=(8, 8, 8), rngs=nnx.Rngs(k)) for k in (0, 1))
    traces = []

    @jax.tree_util.register_dataclass
    @dataclass(frozen=True)
    class Counting:
        inner: object

        def __call__(self, x, t):
            traces.append(1)  # runs only while JAX traces the solve
            return self.inner(x, t)

    out = []
    for m in (first, second):
        out.append(sample(Counting(m), noise, solver="euler", num_steps=2).samples)
        if len(out) == 1:
            traced_once = len(traces)  # Diffrax traces the field a few times per compile
    assert traced_once > 0 and len(traces) == traced_once, "the second network recompiled"
    direct = sample(second, noise, solver="euler", num_steps=2).samples
    np.testing.assert_allclose(out[1], direct, atol=1e-6)
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3
    one_step = lambda m: sample(m, noise, solver="euler", num_steps=1).samples  # noqa: E731
    before = one_step(first)  # x0 + v(x0, 0)
    first.layer_out.bias.value = first.layer_out.bias.value + 1.0  # v + 1 everywhere
    np.testing.assert_allclose(one_step(first) - before, 1.0, atol=1e-5)
    with pytest.raises(TypeError, match="function"):
        sample(np.ones(3), noise)
