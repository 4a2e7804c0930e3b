"""Learned dynamics: E(n)-equivariant simulators built from the EGNN, as pure functions.

    state0 = egnn_jax.dynamics.State(x, v, h)              # one system: [M, n], [M, n], [M, F]

    # A step model, rolled out one saved interval at a time:
    params = egnn_jax.dynamics.step_init(key, config, state0)
    traj = egnn_jax.dynamics.rollout(lambda p, s: egnn_jax.dynamics.step(p, config, s),
                                     params, state0, num_steps=500)     # traj.x [501, M, n]

    # A force field (or a learned potential) integrated by a symplectic Diffrax solver:
    params = egnn_jax.dynamics.force_field_init(key, config, state0)
    traj = egnn_jax.dynamics.integrate(
        lambda p, s: egnn_jax.dynamics.force_field(p, config, s), params, state0,
        dt=0.004, num_steps=500, solver=egnn_jax.sim.Yoshida6())

    # Hard bodies in a box (walls as mirror images; equivariant to the box's symmetries):
    params = egnn_jax.dynamics.contact_step_init(key, config, state0, radius=r, box=L, dt=dt)
    state1 = egnn_jax.dynamics.contact_step(params, config, state0, radius=r, box=L, dt=dt)

Everything composes with `jax.jit`, `jax.vmap` (over systems) and `jax.grad` (training
through the unrolled trajectory or the solve).
"""

from ._contact import contact_step as contact_step
from ._contact import contact_step_init as contact_step_init
from ._contact import mirror_images as mirror_images
from ._integrate import integrate as integrate
from ._learned import distance_feature as distance_feature
from ._learned import force_field as force_field
from ._learned import force_field_init as force_field_init
from ._learned import inverse_distance_features as inverse_distance_features
from ._learned import potential_acceleration as potential_acceleration
from ._learned import potential_energy as potential_energy
from ._learned import potential_init as potential_init
from ._learned import step as step
from ._learned import step_init as step_init
from ._rollout import State as State
from ._rollout import first_nonfinite as first_nonfinite
from ._rollout import rollout as rollout
