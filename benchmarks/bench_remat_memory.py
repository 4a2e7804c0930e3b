"""Memory of the N-body benchmark's train step with and without `--remat` (compile only).

For each model of `egnn_jax.experiments.nbody_scale` that has a `remat` option (EGNN and the
HEGNNs) and each size, the experiment's own jitted train step (loss, value_and_grad, the
protocol's optimiser) is compiled at the protocol's batch of 256 with `remat` off and on, and
XLA's own account of its temporaries (`compiled.memory_analysis().temp_size_in_bytes`) is
recorded: the activations the backward pass keeps, the figure that decides whether a step
fits a machine's memory. Nothing is run, so it measures a 100-body step that would not fit,
in a minute or two per case on a CPU. Parameters and data come on top (a few MiB of
parameters; the batch is `256 N` nodes).

    python benchmarks/bench_remat_memory.py [--bodies 100] [--batch 256] [--models egnn hegnn_l1]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from _common import compiled_train_step, machine, write_json
from bench_fastegnn import make_batch

from egnn_jax.experiments import nbody_scale
from egnn_jax.experiments._step import StepInfo, make_optimizer

MODELS = ("egnn", "hegnn_l1", "hegnn_l2", "hegnn_l3", "hegnn_l6")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, nargs="+", default=[100])
    parser.add_argument("--batch", type=int, default=256, help="systems per batch (256)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--output", default="remat_memory", help="results/<OUTPUT>.json")
    args = parser.parse_args(argv)

    protocol = nbody_scale.NBodyScaleConfig()
    opt = make_optimizer(
        protocol.learning_rate, protocol.weight_decay, clip_norm=protocol.clip_norm
    )
    info = StepInfo(jax.random.key(2), jnp.zeros((), jnp.int32))
    results = {}
    for bodies in args.bodies:
        data = make_batch(args.batch, bodies)
        row = {}
        for name in args.models:
            gib, params = {}, None
            for remat in (False, True):
                config = nbody_scale.NBodyScaleConfig(bodies=bodies, remat=remat)
                spec = nbody_scale.EXPERIMENT.model_spec(name, config)
                if params is None:  # remat changes how a step runs, not the parameters
                    params = spec.init(jax.random.key(1), jax.tree.map(lambda a: a[:1], data))
                step, state = compiled_train_step(spec, params, opt, info)
                compiled = step.lower(params, state, data).compile()
                gib["remat" if remat else "plain"] = (
                    compiled.memory_analysis().temp_size_in_bytes / 2**30
                )
            row[name] = {
                "xla_temp_gib": gib["plain"],
                "xla_temp_gib_remat": gib["remat"],
                "saving": gib["remat"] / gib["plain"],
                "spec": dataclasses.asdict(spec) | {"options": dict(spec.options)},
            }
            print(
                f"{bodies:>4} bodies {name:<9} temporaries {gib['plain']:6.1f} GiB, "
                f"with remat {gib['remat']:6.1f} GiB (x{gib['remat'] / gib['plain']:.2f})",
                flush=True,
            )
        results[str(bodies)] = row
    payload = {
        "benchmark": "nbody_scale_remat_memory",
        "setting": {
            "batch": args.batch,
            "models": "egnn_jax.experiments.nbody_scale specs, their training losses",
            "data": "NBodyConfig systems after one step, nbody_scale.featurise, targets x + v",
            "optimizer": "the experiment's (make_optimizer: clip 10, Adam 5e-4, L2 1e-12)",
            "measure": "compiled.memory_analysis().temp_size_in_bytes of one train step",
        },
        "results": results,
        **machine(),
    }
    path = write_json(args.output, payload)
    print(f"device: {payload['device']}; wrote {path}")


if __name__ == "__main__":
    main()
