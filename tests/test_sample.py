"""Solvers against the closed-form flow of conftest.AffineFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.sample import SOLVERS, sample

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


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "heun"])
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
    """Wraps a velocity and counts how often the compiled solver really calls it."""

    def __init__(self, velocity):
        self.velocity, self.calls = velocity, 0

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._tick)
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


def test_trajectory_endpoints(affine, noise):
    result = sample(affine, noise, num_steps=10, save_trajectory=11)
    assert result.trajectory.shape == (11,) + noise.shape
    np.testing.assert_allclose(result.trajectory[0], noise, atol=1e-6)
    np.testing.assert_allclose(result.trajectory[-1], result.samples, atol=1e-6)


def test_bad_arguments(affine, noise):
    with pytest.raises(ValueError, match="unknown solver"):
        sample(affine, noise, solver="rk4")
    with pytest.raises(ValueError, match="give num_steps"):
        sample(affine, noise, solver="euler")
    with pytest.raises(ValueError, match="positive"):
        sample(affine, noise, solver="euler", num_steps=0)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        sample(affine, jnp.zeros(3))
