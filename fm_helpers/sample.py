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

Diffrax compiles each solve, and reuses the compiled program when it is called again
with the same vector field and arrays of the same shapes. The velocity is handed to the
solve as Diffrax's ``args``: its array leaves (the parameters of a network, an NNX
module, which is a pytree of its arrays) are inputs of the compiled program, so another
network of the same structure runs without compiling again, while a plain Python
function is part of the program, recognised by identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

__all__ = [
    "SOLVERS", "SolverSpec", "SolverOptions", "SolveResult", "SampleResult", "FIRST_STEP",
    "sample", "solve", "solver_spec",
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
class SolverOptions:
    """How to solve an ODE; the keyword arguments of :func:`sample` and
    :func:`fm_helpers.density.log_prob`. ``solver``: a key of :data:`SOLVERS` (any case).
    ``num_steps=None``: adaptive steps with the tolerances ``rtol`` and ``atol`` (see the
    module docstring); an int: that many equal steps."""

    solver: str = "tsit5"
    num_steps: int | None = None
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self):
        spec = solver_spec(self.solver)
        if self.num_steps is None and not spec.adaptive:
            raise ValueError(f"solver {self.solver!r} has no error estimate; give num_steps.")
        if self.num_steps is not None and int(self.num_steps) < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}.")


@dataclass(frozen=True)
class SolveResult:
    """What :func:`solve` returns: Diffrax's ``solution``, the number of velocity
    evaluations ``nfe`` and the number of ``steps`` taken, rejected ones included."""

    solution: diffrax.Solution
    nfe: int
    steps: int


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


def _check_velocity(velocity: Any) -> None:
    if not callable(velocity):
        raise TypeError(f"velocity must be a function (x, t) -> v; got {type(velocity).__name__}.")


def solve(
    vector_field: Callable[[jax.Array, Any, Any], Any],
    y0: Any,
    t0: float,
    t1: float,
    options: SolverOptions,
    *,
    args: Any = None,
    saveat: diffrax.SaveAt,
    max_steps: int = 4096,
) -> SolveResult:
    """Integrate ``dy/dt = vector_field(t, y, args)`` from t0 to t1 with ``options``.

    Adaptive solves start with a step of :data:`FIRST_STEP` towards t1 and stop with an
    error after ``max_steps`` steps. Shared by sampling and by the log-density ODE.
    """
    spec = solver_spec(options.solver)
    if options.num_steps is None:
        controller = diffrax.PIDController(rtol=options.rtol, atol=options.atol)
        dt0 = jnp.asarray(FIRST_STEP if t1 >= t0 else -FIRST_STEP)
    else:
        num_steps = int(options.num_steps)
        # dt0 as an array, and a step cap that does not depend on num_steps, so that Diffrax
        # compiles once per solver rather than once per step count (same numbers either way).
        controller, dt0 = diffrax.ConstantStepSize(), jnp.asarray((t1 - t0) / num_steps)
        max_steps = max(max_steps, num_steps)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), spec.make(), t0, t1, dt0, y0, args=args,
        stepsize_controller=controller, saveat=saveat, max_steps=max_steps,
    )
    steps = int(sol.stats["num_steps"])
    return SolveResult(sol, spec.evals_per_step * steps + spec.evals_at_start, steps)


def _flow(t: jax.Array, x: jax.Array, velocity: Velocity) -> jax.Array:
    """The ODE right-hand side in Diffrax's convention, with the velocity as ``args``."""
    return velocity(x, t)


def sample(
    velocity: Velocity, x0: jax.Array, *, save_trajectory: bool | int = False, **options
) -> SampleResult:
    """Push the noise ``x0`` [n, d] through the flow of ``velocity`` from t = 0 to t = 1.

    ``velocity(x, t)``: a function, or a network (an NNX module) itself.
    ``options``: the fields of :class:`SolverOptions` (``solver="tsit5"``,
    ``num_steps=None``, ``rtol=1e-5``, ``atol=1e-5``). ``save_trajectory=True`` keeps 51
    equally spaced times from 0 to 1; an int ``k >= 2`` keeps ``k``.

    Pitfall: the compiled solve is cached on ``velocity``. A velocity that is a plain
    Python function reading a global (a scale, a step count) is compiled with the value
    the global had at the first call, and later calls reuse it: changing the global
    changes nothing. Pass such values in instead, as arrays inside a pytree (as an NNX
    module holds its parameters), or build a new function for each value.
    """
    _check_velocity(velocity)
    options = SolverOptions(**options)
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
    result = solve(_flow, x0, 0.0, 1.0, options, args=velocity, saveat=saveat)
    ys = result.solution.ys
    return SampleResult(ys[-1], ys if save_trajectory else None, ts, result.nfe, result.steps)
