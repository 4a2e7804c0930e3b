"""`egnn_jax.init` against a Flax init on the caller's own graph, on growing radius graphs.

`init` makes the parameters on a two-node graph (`egnn_jax._init_graph`): the same bits, one
compile per (config, widths, dtype). The alternative, a Flax init on the caller's graph
(what `init` did before), traces and compiles its forward pass at every graph shape (XLA
then drops the pass: the parameters do not depend on it, hence its ~0 temporaries). Both
are timed side by side in one process, as a user meets them: the first call at a size
(compile included) and a repeat call (compiled), on the periodic fluids of `bench_scale.py`
(~30 neighbours a node), EGNN hidden 64, 4 layers.

    python benchmarks/bench_init.py [--nodes 1000 10000 100000]

Writes `benchmarks/results/init.json`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine, write_json
from bench_scale import HIDDEN, LAYERS, fluid

import egnn_jax
from egnn_jax._api import _validate
from egnn_jax._egcl import EGNN


def flax_init_on_the_graph(config):
    @jax.jit
    def init(key, h, x, senders, receivers):
        graph = _validate(config, h, x, None, None, None, senders, receivers, None, None)
        return EGNN(config).init(key, graph, h, x, None, None)

    return init


def seconds(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = parser.parse_args(argv)
    config = egnn_jax.EGNNConfig(HIDDEN, LAYERS, out_features=1)
    key = jax.random.key(0)
    former = flax_init_on_the_graph(config)

    def init(h, x, senders, receivers):
        return egnn_jax.init(key, config, h, x, senders=senders, receivers=receivers)

    rows = []
    for n in args.nodes:
        x, _, senders, receivers, _ = fluid(n)
        h, x = jnp.ones((n, 1), jnp.float32), jnp.asarray(x)
        s, r = jnp.asarray(senders), jnp.asarray(receivers)
        ours_first, ours = seconds(init, h, x, s, r)
        ours_again, _ = seconds(init, h, x, s, r)
        former_first, theirs = seconds(former, key, h, x, s, r)
        former_again, _ = seconds(former, key, h, x, s, r)
        temp = former.lower(key, h, x, s, r).compile().memory_analysis().temp_size_in_bytes
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
        )
        row = {
            "nodes": n,
            "edges": int(senders.size),
            "init_first_s": ours_first,
            "init_again_s": ours_again,
            "flax_on_graph_first_s": former_first,
            "flax_on_graph_again_s": former_again,
            "flax_on_graph_xla_temp_gib": temp / 2**30,
            "same_bits": same,
        }
        rows.append(row)
        print(
            f"{n:>7} nodes, {row['edges']:>9} edges: init {ours_first:.2f} s first, "
            f"{ours_again * 1e3:.1f} ms again | Flax init on the graph {former_first:.2f} s "
            f"first (compile {temp / 2**30:.2f} GiB temporaries), {former_again:.2f} s again "
            f"| same bits: {same}",
            flush=True,
        )
    path = write_json("init", {"machine": machine(), "hidden": HIDDEN, "layers": LAYERS,
                               "rows": rows})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
