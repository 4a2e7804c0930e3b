"""Simulator throughput after compilation: three-body 10k x 500, charged 14k x 5000, collisions.

    .venv/bin/python benchmarks/bench_sim.py [--repeats 3] [--quick]

Prints a table and writes benchmarks/results/bench_sim.json (atomically).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import diffrax
import jax
import numpy as np
from _common import write_json

from egnn_jax.sim import (
    ChargedConfig,
    CollisionsConfig,
    ThreeBodyConfig,
    simulate_charged,
    simulate_collisions,
    simulate_three_body,
)


def _time(fn, repeats):
    fn()  # warm-up: compilation (and every refinement shape the run needs)
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def _baseline_mse(train, test, i0=30, i1=40):
    x0, v0, y = (a.astype(np.float64) for a in (train.x[:, i0], train.v[:, i0], train.x[:, i1]))
    t_hat = np.sum(v0 * (y - x0)) / np.sum(v0 * v0)
    x0, v0, y = (a.astype(np.float64) for a in (test.x[:, i0], test.v[:, i0], test.x[:, i1]))
    return float(np.mean((x0 + t_hat * v0 - y) ** 2)), float(t_hat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats after warm-up")
    ap.add_argument("--quick", action="store_true", help="1/10 sizes (smoke run, not recorded)")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    rows = {}

    tb_cfg = ThreeBodyConfig(n_trajectories=10_000 // scale)
    times, ds = _time(lambda: simulate_three_body(tb_cfg), args.repeats)
    rows["three_body"] = {
        "n_trajectories": tb_cfg.n_trajectories,
        "n_saved": tb_cfg.n_saved,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "trajectories_per_s": tb_cfg.n_trajectories / statistics.median(times),
        "median_rel_energy_error": ds.metadata["median_rel_energy_error"],
        "max_rel_energy_error": ds.metadata["max_rel_energy_error"],
        "n_rejected": ds.metadata["n_rejected"],
        "n_refined": ds.metadata["n_refined"],
        "target_s": 5.0,
    }

    n_tr, n_va, n_te = 10_000 // scale, 2_000 // scale, 2_000 // scale

    def charged_all():
        return [
            simulate_charged(ChargedConfig(n_trajectories=n, split=s))
            for s, n in (("train", n_tr), ("valid", n_va), ("test", n_te))
        ]

    times, (train, _, test) = _time(charged_all, args.repeats)
    mse, t_hat = _baseline_mse(
        simulate_charged(ChargedConfig(n_trajectories=3_000 // scale, split="train")), test
    )
    n_ch = n_tr + n_va + n_te
    rows["charged"] = {
        "n_trajectories": n_ch,
        "n_steps": ChargedConfig().n_steps,
        "precision": ChargedConfig().precision,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "trajectories_per_s": n_ch / statistics.median(times),
        "constant_velocity_test_mse": mse,
        "constant_velocity_t_fit": t_hat,
        "target_s": 20.0,
    }

    # Hard spheres: the default billiards (the 10k x 500 in <= 10 s) and, slower, the
    # same discs under softened gravity (fourth-order leapfrog cut at every contact).
    for name, cfg, target in (
        ("collisions", CollisionsConfig(n_trajectories=10_000 // scale), 10.0),
        (
            "collisions_gravity",
            CollisionsConfig(n_trajectories=1_000 // scale, forces="gravity"),
            None,
        ),
    ):
        times, ds = _time(lambda cfg=cfg: simulate_collisions(cfg), args.repeats)
        meta = ds.metadata
        rows[name] = {
            "n_trajectories": cfg.n_trajectories,
            "n_saved": cfg.n_saved,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "trajectories_per_s": cfg.n_trajectories / statistics.median(times),
            "median_pair_contacts": meta["median_pair_contacts"],
            "median_wall_contacts": meta["median_wall_contacts"],
            "max_rel_energy_error": meta["max_rel_energy_error"],
            "n_refined": meta["n_refined"],
            "n_redrawn": meta["n_redrawn"],
            "target_s": target,
        }

    print(f"{'benchmark':<20}{'N':>8}{'median s':>10}{'min s':>8}{'max s':>8}{'traj/s':>10}")
    for name, r in rows.items():
        print(
            f"{name:<20}{r['n_trajectories']:>8}{r['median_s']:>10.2f}{r['min_s']:>8.2f}"
            f"{r['max_s']:>8.2f}{r['trajectories_per_s']:>10.0f}"
        )
    tb = rows["three_body"]
    print(
        f"three-body: median rel energy error {tb['median_rel_energy_error']:.2e}, "
        f"rejected {tb['n_rejected']}, refined {tb['n_refined']}"
    )
    print(f"charged: constant-velocity baseline test MSE {mse:.4f} (t = {t_hat:.3f})")

    if args.quick:
        return
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "diffrax": diffrax.__version__,
        "repeats": args.repeats,
        "results": rows,
    }
    print(f"wrote {write_json('bench_sim', record)}")


if __name__ == "__main__":
    main()
