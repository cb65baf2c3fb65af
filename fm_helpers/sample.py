"""Sampling: solve dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) with Diffrax.

Taught in chapter 6 ("Sampling").

Fixed-step solvers take ``num_steps`` equal steps of size 1 / num_steps. The adaptive
ones (``num_steps=None``) let Diffrax's ``PIDController`` choose the steps. A step is
accepted when

.. code-block:: text

    RMS( error / (atol + rtol * |x|) ) < 1,

where ``error`` is the solver's embedded error estimate for the step, ``|x|`` the larger
of the state's magnitudes at the two ends of the step, and the root mean square runs over
every coordinate of every point of the batch at once. Otherwise the step is rejected and
retried shorter. All points share one step size, so the steps, and the NFE, depend on
which points are solved together. The first step is :data:`FIRST_STEP`; after an accepted
step the next one is 1 to 10 times as long, after a rejected one 0.2 to 0.9 times
(Diffrax 0.7's defaults).

The number of function evaluations (NFE) counts every call of the velocity field, rejected
steps included:

.. code-block:: text

    NFE = new evaluations per step x steps taken + evaluations before the first step

Tsit5 and Dopri5 are "first same as last": the last stage of a step is the first of the
next, so a step costs 6 new evaluations (of 7 stages) plus one at the very start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = [
    "SOLVERS", "SolverSpec", "SampleResult", "Flow", "FIRST_STEP", "sample", "solve", "solver_spec",
]

Velocity = Callable[[jax.Array, jax.Array], jax.Array]

#: First step of an adaptive solve. Diffrax 0.7 has a heuristic for it (``dt0=None``), but
#: ``diffeqsolve`` wraps every term to handle the direction of time, and for a wrapped term
#: the heuristic returns this same 0.01 without looking at the field. Passed explicitly, it
#: stays 0.01 whatever a later Diffrax does there.
FIRST_STEP = 0.01


class SolverSpec(NamedTuple):
    """A solver the course names, the Diffrax class behind it, and what a step costs."""

    make: Callable[[], diffrax.AbstractSolver]
    evals_per_step: int  # new velocity evaluations per step
    evals_at_start: int  # evaluations before the first step (FSAL solvers: 1)
    adaptive: bool  # Diffrax gives it an embedded error estimate, so num_steps=None works
    order: int


#: The solvers by the names the course uses, with what a step costs.
SOLVERS: dict[str, SolverSpec] = {
    "euler": SolverSpec(diffrax.Euler, 1, 0, False, 1),
    "heun": SolverSpec(diffrax.Heun, 2, 0, True, 2),
    "midpoint": SolverSpec(diffrax.Midpoint, 2, 0, True, 2),
    "tsit5": SolverSpec(diffrax.Tsit5, 6, 1, True, 5),
    "dopri5": SolverSpec(diffrax.Dopri5, 6, 1, True, 5),
}


@dataclass(frozen=True)
class SampleResult:
    """``samples`` [n, d] at t = 1; ``trajectory`` [k, n, d] at times ``ts`` [k] (both None
    unless asked for); ``nfe`` the number of velocity evaluations; ``steps`` the steps
    taken, rejected ones included."""

    samples: jax.Array
    trajectory: jax.Array | None
    ts: jax.Array | None
    nfe: int
    steps: int


def solver_spec(name: str) -> SolverSpec:
    """The :class:`SolverSpec` of a solver named in :data:`SOLVERS` (any case)."""
    try:
        return SOLVERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}.") from None


class Flow(eqx.Module):
    """The ODE right-hand side ``(t, y, args) -> velocity(y, t)`` in Diffrax's convention.

    An Equinox module rather than a lambda: Diffrax's jit caches on it, so calling the
    same velocity again (to time it, say) does not compile again. ``velocity`` is part of
    the module's pytree: its array leaves (the parameters of a
    :class:`fm_helpers.model.ModelVelocity`) are inputs of the compiled solve, while a
    plain Python function is a compile-time constant, recognised by identity.
    """

    velocity: Velocity

    def __call__(self, t: jax.Array, y: jax.Array, args: object = None) -> jax.Array:
        return self.velocity(y, t)


def solve(
    vector_field: Callable[[jax.Array, object, object], object],
    y0: jax.Array,
    t0: float,
    t1: float,
    *,
    solver: str,
    num_steps: int | None,
    rtol: float,
    atol: float,
    saveat: diffrax.SaveAt,
    max_steps: int = 4096,
) -> tuple[diffrax.Solution, int, int]:
    """Integrate ``dy/dt = vector_field(t, y, None)`` from t0 to t1.

    Returns the Diffrax solution, the NFE and the number of steps (rejected ones
    included). Adaptive solves (``num_steps=None``) start with a step of
    :data:`FIRST_STEP` towards t1 and stop with an error after ``max_steps`` steps.
    Shared by sampling and by the log-density ODE.
    """
    spec = solver_spec(solver)
    if num_steps is None:
        if not spec.adaptive:
            raise ValueError(f"solver {solver!r} has no error estimate; give num_steps.")
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = jnp.asarray(FIRST_STEP if t1 >= t0 else -FIRST_STEP)
    else:
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
        # dt0 as an array, and a step cap that does not depend on num_steps, so that Diffrax
        # compiles once per solver rather than once per step count (same numbers either way).
        controller, dt0 = diffrax.ConstantStepSize(), jnp.asarray((t1 - t0) / int(num_steps))
        max_steps = max(max_steps, int(num_steps))
    term = diffrax.ODETerm(vector_field)
    sol = diffrax.diffeqsolve(
        term, spec.make(), t0, t1, dt0, y0,
        stepsize_controller=controller, saveat=saveat, max_steps=max_steps,
    )
    steps = int(sol.stats["num_steps"])
    return sol, spec.evals_per_step * steps + spec.evals_at_start, steps


def sample(
    velocity: Velocity,
    x0: jax.Array,
    *,
    solver: str = "tsit5",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    save_trajectory: bool | int = False,
) -> SampleResult:
    """Push the noise ``x0`` [n, d] through the flow of ``velocity`` from t = 0 to t = 1.

    ``num_steps=None`` uses an adaptive step size (``tsit5``, ``dopri5``, ``heun`` or
    ``midpoint``) with tolerances ``rtol`` and ``atol``; otherwise ``num_steps`` fixed
    steps. ``save_trajectory=True`` keeps 51 equally spaced times from 0 to 1; an int
    ``k >= 2`` keeps ``k``.

    Pitfall: the compiled solve is cached on ``velocity``. A velocity that is a plain
    Python function reading a global (a scale, a step count) is compiled with the value
    the global had at the first call, and later calls reuse it: changing the global
    changes nothing. Pass such values in instead: as array fields of an Equinox module
    (as :class:`fm_helpers.model.ModelVelocity` holds its parameters), or by building a
    new function for each value.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape [n, d]; got {x0.shape}.")
    if save_trajectory is not False and save_trajectory is not True:
        if int(save_trajectory) < 2:
            raise ValueError(
                f"save_trajectory=k keeps k >= 2 times (t = 0 and t = 1 at least); "
                f"got {save_trajectory!r}. Use False for no trajectory."
            )
    if save_trajectory:
        k = 51 if save_trajectory is True else int(save_trajectory)
        ts = jnp.linspace(0.0, 1.0, k)
        saveat = diffrax.SaveAt(ts=ts)
    else:
        ts, saveat = None, diffrax.SaveAt(t1=True)
    sol, nfe, steps = solve(
        Flow(velocity), x0, 0.0, 1.0, solver=solver, num_steps=num_steps, rtol=rtol, atol=atol,
        saveat=saveat,
    )
    trajectory = sol.ys if save_trajectory else None
    return SampleResult(sol.ys[-1], trajectory, ts, nfe, steps)
