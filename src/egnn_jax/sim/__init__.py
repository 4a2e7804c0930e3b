"""Differentiable simulators for the experiments' data.

* Gravitational three-body systems integrated by Diffrax in float64
  (:class:`ThreeBodyConfig`, :func:`simulate_three_body`, :func:`three_body_trajectory`).
* The EGNN paper's charged-particles benchmark (:class:`ChargedConfig`,
  :func:`simulate_charged`, :func:`charged_trajectory`, :func:`charged_splits`).
* Charged N-body systems of any size, the GMN / HEGNN / FastEGNN protocol
  (:class:`NBodyConfig`, :func:`simulate_nbody`, :func:`nbody_forces`).
* Hard spheres in a box with elastic collisions at their exact times, billiards or softened
  gravity (:class:`CollisionsConfig`, :func:`simulate_collisions`, :func:`collisions_trajectory`).
* Charged particles bound into rigid complexes, the EGHN M-complex protocol
  (:class:`ComplexesConfig`, :func:`simulate_complexes`, :func:`complexes_trajectory`).
* :class:`Leapfrog` and :class:`Yoshida6`, symplectic Diffrax solvers for ``x'' = a(x)``.
* The dataset container every simulator returns (:class:`Dataset`) and a cache of generated
  datasets (:func:`load_or_simulate`).

Command line: ``python -m egnn_jax.sim {three-body,charged,nbody,collisions,complexes} --help``.
"""

from ._cache import cache_path as cache_path
from ._cache import charged_split as charged_split
from ._cache import charged_splits as charged_splits
from ._cache import load_or_simulate as load_or_simulate
from ._charged import SAMPLERS as SAMPLERS
from ._charged import ChargedConfig as ChargedConfig
from ._charged import charged_energy as charged_energy
from ._charged import charged_forces as charged_forces
from ._charged import charged_trajectory as charged_trajectory
from ._charged import sample_charged_initial_conditions as sample_charged_initial_conditions
from ._charged import simulate_charged as simulate_charged
from ._collisions import CollisionsConfig as CollisionsConfig
from ._collisions import collisions_trajectory as collisions_trajectory
from ._collisions import (
    sample_collisions_initial_conditions as sample_collisions_initial_conditions,
)
from ._collisions import simulate_collisions as simulate_collisions
from ._complexes import ComplexesConfig as ComplexesConfig
from ._complexes import complex_sizes as complex_sizes
from ._complexes import complexes_trajectory as complexes_trajectory
from ._complexes import simulate_complexes as simulate_complexes
from ._dataset import CorruptDatasetError as CorruptDatasetError
from ._dataset import Dataset as Dataset
from ._dataset import load_dataset as load_dataset
from ._dataset import save_dataset as save_dataset
from ._nbody import NBodyConfig as NBodyConfig
from ._nbody import nbody_forces as nbody_forces
from ._nbody import simulate_nbody as simulate_nbody
from ._three_body import ThreeBodyConfig as ThreeBodyConfig
from ._three_body import gravity_acceleration as gravity_acceleration
from ._three_body import gravity_energy as gravity_energy
from ._three_body import (
    sample_three_body_initial_conditions as sample_three_body_initial_conditions,
)
from ._three_body import simulate_three_body as simulate_three_body
from ._three_body import three_body_trajectory as three_body_trajectory
from ._yoshida import Leapfrog as Leapfrog
from ._yoshida import SymplecticComposition as SymplecticComposition
from ._yoshida import Yoshida6 as Yoshida6
