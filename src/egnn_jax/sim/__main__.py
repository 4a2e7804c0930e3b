"""Command line: ``python -m egnn_jax.sim SYSTEM --n N --out FILE.npz``.

SYSTEM is three-body, charged, nbody, collisions or complexes. Writes ``x [N, T, M, dim]``,
``v [N, T, M, dim]``, ``t [T]``, and ``masses [N, M]`` (three-body; collisions, which adds
``radius`` and ``box``) or ``charges [N, M]`` (charged, nbody; complexes, which adds
``complex_id`` and ``node_mask [N, M]``, its systems padded to one M), plus the full config and run
metadata as JSON in the array ``metadata_json``.  The file is written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ._charged import SAMPLERS, ChargedConfig
from ._collisions import FORCES, CollisionsConfig
from ._complexes import ComplexesConfig
from ._dataset import save_dataset
from ._nbody import NBodyConfig
from ._three_body import ThreeBodyConfig


def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {s}")
    return v


def _masses(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(m) for m in s.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"masses must be comma-separated floats; got {s}") from e


def _frames(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(f) for f in s.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"frames must be comma-separated integers; got {s}") from e


def _run_flags(parser: argparse.ArgumentParser, cfg, *, dim: bool = True) -> None:
    """The flags every simulator has first: how many, which seed, where, in what dimension."""
    parser.add_argument("--n", type=_positive_int, default=cfg.n_trajectories, help="trajectories")
    parser.add_argument("--seed", type=int, default=cfg.seed, help="PRNG seed")
    parser.add_argument("--out", required=True, help="output .npz path")
    if dim:
        parser.add_argument(
            "--dim", type=int, choices=(2, 3), default=cfg.dim, help="spatial dimension"
        )


def _batch_flags(parser: argparse.ArgumentParser, cfg) -> None:
    """The flags every simulator has last: chunking and the progress bar."""
    parser.add_argument(
        "--chunk-size", type=_positive_int, default=cfg.chunk_size, help="trajectories per batch"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    tb, ch, nb, co = ThreeBodyConfig(), ChargedConfig(), NBodyConfig(), CollisionsConfig()
    cx = ComplexesConfig()
    parser = argparse.ArgumentParser(
        prog="python -m egnn_jax.sim",
        description="Simulate a dataset and write it to an .npz file (arrays + JSON metadata).",
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(
        dest="system", required=True, metavar="{three-body,charged,nbody,collisions,complexes}"
    )

    p = sub.add_parser(
        "three-body",
        help="gravitational three-body systems (Diffrax, float64)",
        description="Bound three-body systems in the centre-of-mass frame, G=1 units; positions "
        "N(0, position_std^2), velocities scaled to a virial ratio ~ U(virial_min, virial_max); "
        "frames at linspace(0, t_end, n_saved).  Trajectories whose relative energy error "
        "exceeds --energy-tol after step refinement are rejected and redrawn (count reported).",
        formatter_class=fmt,
    )
    _run_flags(p, tb)
    p.add_argument("--n-saved", type=_positive_int, default=tb.n_saved, help="saved frames T")
    p.add_argument("--t-end", type=float, default=tb.t_end, help="time of the last frame")
    p.add_argument(
        "--masses",
        type=_masses,
        default=tb.masses,
        help="comma-separated masses, one per body (sets the number of bodies)",
    )
    p.add_argument("--G", type=float, default=tb.G, help="gravitational constant")
    p.add_argument("--softening", type=float, default=tb.softening, help="Plummer softening")
    p.add_argument("--position-std", type=float, default=tb.position_std, help="position scale")
    p.add_argument("--virial-min", type=float, default=tb.virial_min, help="min virial ratio")
    p.add_argument("--virial-max", type=float, default=tb.virial_max, help="max virial ratio")
    p.add_argument(
        "--energy-tol", type=float, default=tb.energy_tol, help="max relative energy error"
    )
    p.add_argument(
        "--substeps", type=_positive_int, default=tb.substeps, help="steps per saved interval"
    )
    _batch_flags(p, tb)

    c = sub.add_parser(
        "charged",
        help="charged particles, the EGNN N-body benchmark protocol",
        description="5 particles, charges +-1, semi-implicit Euler with dt=0.001 for 5000 steps, "
        "frames every 100 steps (frame k = state after 100(k+1) steps).",
        formatter_class=fmt,
    )
    _run_flags(c, ch)
    c.add_argument(
        "--split",
        choices=("train", "valid", "test"),
        default=ch.split,
        help="independent PRNG stream of the seed",
    )
    c.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=ch.sampler,
        help="initial conditions from the JAX PRNG, or NumPy's legacy stream in the reference "
        "generator's order (--seed 43: the EGNN paper's nbody_small data)",
    )
    c.add_argument(
        "--legacy-split-sizes",
        type=int,
        nargs=2,
        default=ch.legacy_split_sizes,
        metavar=("TRAIN", "VALID"),
        help="numpy-legacy: trajectories drawn for train and valid before the later splits",
    )
    c.add_argument("--n-particles", type=_positive_int, default=ch.n_particles, help="particles")
    c.add_argument("--n-steps", type=_positive_int, default=ch.n_steps, help="integration steps")
    c.add_argument(
        "--save-every", type=_positive_int, default=ch.save_every, help="steps between frames"
    )
    c.add_argument("--dt", type=float, default=ch.dt, help="time step")
    c.add_argument(
        "--precision", choices=("float32", "float64"), default=ch.precision, help="compute dtype"
    )
    _batch_flags(c, ch)

    b = sub.add_parser(
        "nbody",
        help="charged N-body systems of any size, the GMN / HEGNN / FastEGNN protocol",
        description="N bodies, charges +-1, no box, positions N(0, ((N/5)^(1/3) + 0.1)^2), "
        "speeds 0.5; semi-implicit Euler with dt=0.001 for 5000 steps, force components "
        "clipped to +-100; frame k = state after 100k + 1 steps (50 frames).",
        formatter_class=fmt,
    )
    b.add_argument("--bodies", type=_positive_int, default=nb.n_bodies, help="bodies N")
    _run_flags(b, nb)
    b.add_argument(
        "--split",
        choices=("train", "valid", "test"),
        default=nb.split,
        help="independent PRNG stream of the seed",
    )
    b.add_argument("--n-steps", type=_positive_int, default=nb.n_steps, help="integration steps")
    b.add_argument(
        "--save-every", type=_positive_int, default=nb.save_every, help="steps between frames"
    )
    b.add_argument("--dt", type=float, default=nb.dt, help="time step")
    b.add_argument(
        "--frames",
        type=_frames,
        help="comma-separated frames to keep (default: all), e.g. 30,40",
    )
    b.add_argument(
        "--precision", choices=("float32", "float64"), default=nb.precision, help="compute dtype"
    )
    _batch_flags(b, nb)

    o = sub.add_parser(
        "collisions",
        help="hard spheres in a box, elastic collisions at their exact times",
        description="Discs (2-D) or balls (3-D) of one radius and mass in the box [-L, L]^dim, "
        "placed uniformly without overlap, velocity components N(0, speed_std^2); perfectly "
        "elastic body-body and body-wall collisions resolved at their exact times; free flight "
        "(--forces none, billiards) or softened gravity (--forces gravity).  Frames at "
        "linspace(0, t_end, n_saved).",
        formatter_class=fmt,
    )
    _run_flags(o, co)
    o.add_argument("--bodies", type=_positive_int, default=co.n_bodies, help="bodies M")
    o.add_argument("--radius", type=float, default=co.radius, help="sphere radius r")
    o.add_argument("--box", type=float, default=co.box, help="box half-width L")
    o.add_argument("--mass", type=float, default=co.mass, help="mass of every body")
    o.add_argument("--speed-std", type=float, default=co.speed_std, help="velocity scale")
    o.add_argument("--forces", choices=FORCES, default=co.forces, help="forces between contacts")
    o.add_argument("--G", type=float, default=co.G, help="gravitational constant (gravity)")
    o.add_argument("--softening", type=float, default=co.softening, help="Plummer softening")
    o.add_argument("--t-end", type=float, default=co.t_end, help="time of the last frame")
    o.add_argument("--n-saved", type=_positive_int, default=co.n_saved, help="saved frames K")
    o.add_argument(
        "--substeps", type=_positive_int, default=co.substeps, help="steps per frame (gravity)"
    )
    o.add_argument(
        "--energy-tol", type=float, default=co.energy_tol, help="max relative energy error"
    )
    _batch_flags(o, co)

    k = sub.add_parser(
        "complexes",
        help="charged particles bound into rigid complexes, the EGHN M-complex protocol",
        description="M rigid complexes of charged particles (charges +-1, Coulomb forces with "
        "components clipped to +-100), complex sizes from 5 system types drawn from "
        "2 .. 2*avg - 2; semi-implicit Euler rigid-body steps with dt=0.001 for 5000 steps; "
        "frame k = state after 100k + 1 steps (50 frames).  Systems are padded to the largest "
        "type (complex_id -1, node_mask False).",
        formatter_class=fmt,
    )
    k.add_argument("--complexes", type=_positive_int, default=cx.n_complexes, help="complexes M")
    k.add_argument("--avg-size", type=int, default=cx.avg_size, help="nominal complex size")
    _run_flags(k, cx, dim=False)
    k.add_argument(
        "--split",
        choices=("train", "valid", "test"),
        default=cx.split,
        help="independent PRNG stream of the seed (the system types are shared)",
    )
    k.add_argument("--system-types", type=_positive_int, default=cx.system_types, help="types")
    k.add_argument("--n-steps", type=_positive_int, default=cx.n_steps, help="integration steps")
    k.add_argument(
        "--save-every", type=_positive_int, default=cx.save_every, help="steps between frames"
    )
    k.add_argument("--dt", type=float, default=cx.dt, help="time step")
    k.add_argument(
        "--translational-mass",
        choices=("n_squared", "n"),
        default=cx.translational_mass,
        help="a complex of n particles translates with mass n^2 (the reference) or n",
    )
    k.add_argument("--frames", type=_frames, help="comma-separated frames to keep (default: all)")
    _batch_flags(k, cx)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.system == "three-body":
            from ._three_body import simulate_three_body

            cfg = ThreeBodyConfig(
                n_trajectories=args.n,
                n_bodies=len(args.masses),
                dim=args.dim,
                n_saved=args.n_saved,
                t_end=args.t_end,
                masses=args.masses,
                G=args.G,
                softening=args.softening,
                position_std=args.position_std,
                virial_min=args.virial_min,
                virial_max=args.virial_max,
                energy_tol=args.energy_tol,
                substeps=args.substeps,
                chunk_size=args.chunk_size,
                seed=args.seed,
            )
            ds = simulate_three_body(cfg, progress=not args.no_progress)
        elif args.system == "collisions":
            from ._collisions import simulate_collisions

            cfg = CollisionsConfig(
                n_trajectories=args.n,
                n_bodies=args.bodies,
                dim=args.dim,
                radius=args.radius,
                box=args.box,
                mass=args.mass,
                speed_std=args.speed_std,
                forces=args.forces,
                G=args.G,
                softening=args.softening,
                t_end=args.t_end,
                n_saved=args.n_saved,
                substeps=args.substeps,
                energy_tol=args.energy_tol,
                chunk_size=args.chunk_size,
                seed=args.seed,
            )
            ds = simulate_collisions(cfg, progress=not args.no_progress)
        elif args.system == "complexes":
            from ._complexes import simulate_complexes

            cfg = ComplexesConfig(
                n_trajectories=args.n,
                n_complexes=args.complexes,
                avg_size=args.avg_size,
                system_types=args.system_types,
                n_steps=args.n_steps,
                save_every=args.save_every,
                dt=args.dt,
                translational_mass=args.translational_mass,
                frames=args.frames,
                split=args.split,
                chunk_size=args.chunk_size,
                seed=args.seed,
            )
            ds = simulate_complexes(cfg, progress=not args.no_progress)
        elif args.system == "nbody":
            from ._nbody import simulate_nbody

            cfg = NBodyConfig(
                n_trajectories=args.n,
                n_bodies=args.bodies,
                dim=args.dim,
                n_steps=args.n_steps,
                save_every=args.save_every,
                dt=args.dt,
                frames=args.frames,
                split=args.split,
                precision=args.precision,
                chunk_size=args.chunk_size,
                seed=args.seed,
            )
            ds = simulate_nbody(cfg, progress=not args.no_progress)
        else:
            from ._charged import simulate_charged

            cfg = ChargedConfig(
                n_trajectories=args.n,
                n_particles=args.n_particles,
                dim=args.dim,
                n_steps=args.n_steps,
                save_every=args.save_every,
                dt=args.dt,
                split=args.split,
                precision=args.precision,
                chunk_size=args.chunk_size,
                seed=args.seed,
                sampler=args.sampler,
                legacy_split_sizes=args.legacy_split_sizes,
            )
            ds = simulate_charged(cfg, progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = save_dataset(ds, args.out)
    meta = ds.metadata
    summary = {
        "out": str(path),
        "system": args.system,
        "x": list(ds.x.shape),
        "t": [float(ds.t[0]), float(ds.t[-1])],
        "wall_seconds": round(meta["wall_seconds"], 3),
    }
    if args.system == "collisions":
        print(f"redrawn trajectories: {meta['n_redrawn']} (refined: {meta['n_refined']})")
        for key in (
            "median_pair_contacts",
            "median_wall_contacts",
            "median_rel_energy_error",
            "max_rel_energy_error",
        ):
            summary[key] = meta[key]
    if args.system == "complexes":
        print(f"redrawn trajectories: {meta['n_redrawn']}")
        summary["system_types"] = meta["system_types"]
        summary["frame_spacing"] = meta["frame_spacing"]
    if args.system == "three-body":
        print(f"rejected trajectories: {meta['n_rejected']} (refined: {meta['n_refined']})")
        summary["median_rel_energy_error"] = meta["median_rel_energy_error"]
        summary["max_rel_energy_error"] = meta["max_rel_energy_error"]
    print(json.dumps(summary))
    print("config: " + json.dumps(dataclasses.asdict(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
