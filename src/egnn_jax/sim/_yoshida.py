"""Symplectic Diffrax solvers (leapfrog, Yoshida-6) for second-order systems ``x'' = a(x)``.

Used by the three-body simulator and by learned dynamics that integrate a force field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax

__all__ = ["Leapfrog", "SymplecticComposition", "Yoshida6"]

# Yoshida (1990) sixth-order composition, "solution A": the step is a palindrome of seven
# leapfrog (kick-drift-kick) sub-steps with these weights.
_W1, _W2, _W3 = -1.17767998417887, 0.235573213359357, 0.784513610477560
_W0 = 1.0 - 2.0 * (_W1 + _W2 + _W3)
_YOSHIDA6 = (_W3, _W2, _W1, _W0, _W1, _W2, _W3)


class SymplecticComposition(diffrax.AbstractSolver):
    """A palindrome of leapfrog (kick-drift-kick) sub-steps with the `weights` of a subclass,
    for ``x'' = a(x)`` (or ``a(x, v)``, then no longer exactly symplectic).

    The state is ``(x, v)`` and the vector field of the single ``ODETerm`` must return
    ``(v, a(x, v))``; the acceleration is read at the drifted positions with the half-kicked
    velocity. Constant step only. Adjacent half-kicks of consecutive sub-steps are merged, so
    a step costs one force evaluation per weight (the last one is reused first-same-as-last).
    Dense output is the cubic Hermite interpolant built from ``(x, v, a)`` at both ends.
    """

    weights: ClassVar[tuple[float, ...]]
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., Any]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation
    )

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)[1]

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        x, v = y0
        a = solver_state
        h = t1 - t0
        w = self.weights
        v = v + (0.5 * w[0] * h) * a
        for k in range(len(w)):
            x = x + (w[k] * h) * v
            a = terms.vf(t0, (x, v), args)[1]
            kick = 0.5 * (w[k] + w[k + 1]) if k + 1 < len(w) else 0.5 * w[k]
            v = v + (kick * h) * a
        y1 = (x, v)
        k0 = (h * y0[1], h * solver_state)
        k1 = (h * v, h * a)
        dense_info = dict(y0=y0, y1=y1, k0=k0, k1=k1)
        return y1, None, dense_info, a, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class Leapfrog(SymplecticComposition):
    """Second-order symplectic leapfrog (velocity Verlet, kick-drift-kick) for ``x'' = a(x)``:
    one force evaluation per step. See `SymplecticComposition` for the state and the term."""

    weights: ClassVar[tuple[float, ...]] = (1.0,)

    def order(self, terms):
        return 2


class Yoshida6(SymplecticComposition):
    """Sixth-order symplectic composition of leapfrog (Yoshida 1990) for ``x'' = a(x)``.

    See `SymplecticComposition` for the state and the term. Being symplectic, the energy error
    stays bounded (no secular drift), and one force evaluation per sub-step (7 per step) makes
    it much cheaper per step than an 8th-order Runge-Kutta tableau, whose stage combinations
    dominate the cost for a 12-number state.
    """

    weights: ClassVar[tuple[float, ...]] = _YOSHIDA6

    def order(self, terms):
        return 6
