"""Train-step benchmark: forward + backward + Adam for a batch of 100 complete graphs.

The issue's setting: 5 nodes, 3-D, hidden 64, 4 layers, velocity variant, edge attributes of
width 2, one node feature. Cases, timed round-robin in one process:

- dense_step / dense_forward: `egnn_jax.apply` on dense graphs under `jax.vmap` (the default);
- sparse_step / sparse_forward: the same batch as one disjoint-union edge list (segment_sum);
- matmul_floor: only the matrix products of the EGNN step, same shapes, forward and backward
  (no activations, coordinates, aggregation masks or optimiser): a lower bound that XLA:CPU
  cannot beat for this model, measured side by side so the target can be judged against it.

Reference figures measured on the project's 2-core CPU (issue 2): the authors' PyTorch code
22 ms per step (7.4 ms forward), an older JAX/Haiku port 12.8 ms (4.2 ms). Target: <= 6 ms.

    python benchmarks/bench_train_step.py [--repeats 200] [--batch 100]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from _common import machine, time_interleaved, write_json

import egnn_jax


def make_batch(key, batch, nodes, dim, attr):
    kh, kx, kv, ky = jax.random.split(key, 4)
    x = jax.random.normal(kx, (batch, nodes, dim))
    v = jax.random.normal(kv, (batch, nodes, dim))
    h = jnp.linalg.norm(v, axis=-1, keepdims=True)
    d2 = jnp.sum((x[:, :, None] - x[:, None]) ** 2, axis=-1, keepdims=True)
    q = jax.random.choice(kh, jnp.array([-1.0, 1.0]), (batch, nodes, 1))
    a = jnp.concatenate([q[:, :, None] * q[:, None, :], d2], axis=-1)
    y = x + jax.random.normal(ky, x.shape)
    return h, x, v, a, y


def make_matmul_floor(batch, nodes, attr, hidden=64, layers=4, seed=0):
    """`(floor_step, weights, inputs)`: value and gradient of a network made of exactly the
    matrix products of the EGNN train step, per layer (N nodes, E = N (M - 1) edges, H wide):
    `[N, H] @ [H, 4H]` (every linear map of h), `[E, A] @ [A, H]`, `[E, H] @ [H, H]` twice,
    `[E, H] @ [H, 1]`, `[N, H] @ [H, 1]` and, except in the last layer, whose h is unused,
    `[N, H] @ [H, H]` twice."""
    n, e, h = batch * nodes, batch * nodes * (nodes - 1), hidden
    shapes = {
        "proj": (h, 4 * h),
        "attr": (attr, h),
        "edge_out": (h, h),
        "coord_hidden": (h, h),
        "coord_out": (h, 1),
        "vel_out": (h, 1),
        "node_m": (h, h),
        "node_out": (h, h),
    }
    keys = jax.random.split(jax.random.key(seed), len(shapes) + 2)
    weights = {
        name: 0.1 * jax.random.normal(k, (layers, *shape))
        for k, (name, shape) in zip(keys, shapes.items(), strict=False)
    }
    inputs = (jax.random.normal(keys[-2], (n, h)), jax.random.normal(keys[-1], (e, attr)))

    def net(w, x, a):
        total = jnp.zeros(())
        for i in range(layers):
            p = x @ w["proj"][i]
            m = jnp.repeat(p[:, :h], nodes - 1, axis=0) + a @ w["attr"][i]
            m = m @ w["edge_out"][i]
            total = total + jnp.sum((m @ w["coord_hidden"][i]) @ w["coord_out"][i])
            total = total + jnp.sum(p[:, 3 * h :] @ w["vel_out"][i])
            if i < layers - 1:
                m_i = jnp.sum(m.reshape(n, nodes - 1, h), axis=1)
                x = x + (m_i @ w["node_m"][i] + p[:, 2 * h : 3 * h]) @ w["node_out"][i]
        return total

    return jax.jit(jax.value_and_grad(net)), weights, inputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per case (200)")
    parser.add_argument("--batch", type=int, default=100, help="graphs per batch (100)")
    parser.add_argument("--nodes", type=int, default=5, help="nodes per graph (5)")
    args = parser.parse_args(argv)

    config = egnn_jax.EGNNConfig(hidden_features=64, num_layers=4, velocity=True)
    h, x, v, a, y = make_batch(jax.random.key(0), args.batch, args.nodes, 3, 2)
    params = egnn_jax.init(jax.random.key(1), config, h[0], x[0], v=v[0], edge_attr=a[0])
    opt = optax.flatten(optax.adam(5e-4))  # as the experiments' training loop (one fused update)
    opt_state = opt.init(params)

    def dense_loss(p, h, x, v, a, y):
        fwd = lambda h, x, v, a: egnn_jax.apply(p, config, h, x, v=v, edge_attr=a)[1]
        return jnp.mean((jax.vmap(fwd)(h, x, v, a) - y) ** 2)

    senders, receivers = egnn_jax.complete_graph_edges(args.nodes)
    offsets = args.nodes * jnp.arange(args.batch, dtype=jnp.int32)[:, None]
    s_all = (senders[None] + offsets).reshape(-1)
    r_all = (receivers[None] + offsets).reshape(-1)
    a_sparse = jax.vmap(egnn_jax.dense_to_sparse_edge_attr)(a).reshape(-1, a.shape[-1])
    flat = lambda t: t.reshape(-1, t.shape[-1])

    def sparse_loss(p, h, x, v, a, y):
        _, x_out = egnn_jax.apply(
            p, config, flat(h), flat(x), v=flat(v), edge_attr=a, senders=s_all, receivers=r_all
        )
        return jnp.mean((x_out - flat(y)) ** 2)

    def make_step(loss):
        @jax.jit
        def step(p, s, *batch):
            value, grads = jax.value_and_grad(loss)(p, *batch)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        return step

    dense_step, sparse_step = make_step(dense_loss), make_step(sparse_loss)
    dense_fwd, sparse_fwd = jax.jit(dense_loss), jax.jit(sparse_loss)
    dense_batch, sparse_batch = (h, x, v, a, y), (h, x, v, a_sparse, y)

    floor_step, floor_weights, floor_inputs = make_matmul_floor(args.batch, args.nodes, 2)
    cases = {
        "dense_step": lambda: jax.block_until_ready(dense_step(params, opt_state, *dense_batch)),
        "sparse_step": lambda: jax.block_until_ready(sparse_step(params, opt_state, *sparse_batch)),
        "dense_forward": lambda: jax.block_until_ready(dense_fwd(params, *dense_batch)),
        "sparse_forward": lambda: jax.block_until_ready(sparse_fwd(params, *sparse_batch)),
        "matmul_floor": lambda: jax.block_until_ready(floor_step(floor_weights, *floor_inputs)),
    }
    results = time_interleaved(cases, args.repeats)
    payload = {
        "benchmark": "train_step",
        "setting": {
            "batch": args.batch,
            "nodes": args.nodes,
            "dim": 3,
            "hidden": 64,
            "layers": 4,
            "velocity": True,
            "edge_attr": 2,
            "optimizer": "adam",
        },
        "results": results,
        "reference_ms": {"pytorch_step": 22.0, "haiku_step": 12.8, "target_step": 6.0},
        "dense_vs_sparse_step": results["sparse_step"]["median_ms"]
        / results["dense_step"]["median_ms"],
        "dense_step_vs_matmul_floor": results["dense_step"]["median_ms"]
        / results["matmul_floor"]["median_ms"],
        **machine(),
    }
    path = write_json("train_step", payload)
    print(f"{'case':<16}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['median_ms']:>12.2f}{r['min_ms']:>10.2f}{r['max_ms']:>10.2f}")
    print(f"device: {payload['device']}; wrote {path}")


if __name__ == "__main__":
    main()
