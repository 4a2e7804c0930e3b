"""EGNN forward + backward on a large radius graph against `EGNNConfig.edge_chunk_size`.

The graph, model and step of `bench_scale.py` (a random periodic fluid with ~30 neighbours
per node; a 4-layer EGNN, hidden 64; `value_and_grad` of a sum of squares), once per chunk
size, timed round-robin in one process so that the sizes share the machine's load. Small
chunks pay a fixed cost per chunk (a `lax.scan` step of some twenty small kernels); large
ones spill the chunk's `[C, 64]` arrays out of the CPU's caches. This measures where the
balance lies; `bench_scale.py --edge-chunk-size` takes the result.

    python benchmarks/bench_edge_chunks.py [--sizes 10000] [--chunk-sizes 1024 ... 32768]
        [--repeats 5] [--output edge_chunks]
"""

from __future__ import annotations

import argparse

from _common import machine, time_interleaved, write_json
from bench_scale import HIDDEN, LAYERS, fluid, jax_case


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument(
        "--chunk-sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768]
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (5)")
    parser.add_argument("--output", default="edge_chunks", help="benchmarks/results/<OUTPUT>.json")
    args = parser.parse_args(argv)
    if any(c < 1 for c in args.chunk_sizes):
        parser.error("chunk sizes must be >= 1")

    results = {}
    for n in args.sizes:
        x, side, senders, receivers, _ = fluid(n)
        cases = {}
        for chunk in args.chunk_sizes:
            cases[str(chunk)], _ = jax_case(
                x, side, senders, receivers, remat=False, edge_chunk_size=chunk
            )
        timing = time_interleaved(cases, args.repeats, warmup=1)
        fastest = min(timing, key=lambda c: timing[c]["median_ms"])
        results[str(n)] = {
            "nodes": n,
            "edges": int(senders.size),
            "chunks": timing,
            "fastest_chunk_size": int(fastest),
            "over_fastest": {
                c: t["median_ms"] / timing[fastest]["median_ms"] for c, t in timing.items()
            },
        }
        print(
            f"{n} nodes: "
            + ", ".join(f"{c}: {t['median_ms']:.0f} ms" for c, t in timing.items())
            + f" (fastest {fastest})",
            flush=True,
        )
    path = write_json(
        args.output,
        {
            "benchmark": "EGNN value_and_grad on a radius graph against edge_chunk_size",
            "setting": {
                "model": f"EGNN {LAYERS} layers, hidden {HIDDEN}, 1 in / 1 out feature, float32",
                "graph": "random periodic fluid, density 1, cell-list radius graph",
                "step": "value_and_grad of sum(h_out^2) + sum(x_out^2)",
            },
            **machine(),
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
