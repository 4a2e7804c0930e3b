"""One graph split over devices by its edges: same outputs and gradients as on one device.

Several CPU devices exist only when XLA is told so before JAX starts, so the multi-device
check runs in a child process with ``--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from _cli import clean_env
from jax.sharding import Mesh

import egnn_jax

_FOUR_DEVICES = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    import egnn_jax

    # A periodic radius graph whose edge count (with filler edges dropped) is not a multiple
    # of 4, so that the split pads; the graph's own mask is kept on top.
    n, side = 300, 6.0
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, side, (n, 3)), jnp.float32)
    g = egnn_jax.radius_graph(x, 1.5, capacity=40 * n, box=side)
    e = int(g.num_edges) | 1
    s, r = np.asarray(g.senders)[:e], np.asarray(g.receivers)[:e]
    mask = np.asarray(g.edge_mask)[:e].copy()
    mask[::7] = False
    attr = rng.normal(size=(e, 2)).astype(np.float32)
    h = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    cfg = egnn_jax.EGNNConfig(32, 3, velocity=True, out_features=2)
    params = egnn_jax.init(jax.random.key(0), cfg, h, x, v=v, edge_attr=attr,
                           senders=s, receivers=r)

    def loss(p, h, x, v, s, r, m, a):
        ho, xo = egnn_jax.apply(p, cfg, h, x, v=v, edge_attr=a, senders=s, receivers=r,
                                edge_mask=m, box=side)
        return jnp.sum(ho ** 2) + jnp.sum(jnp.sin(xo))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    one = (params, h, x, v, s, r, mask, attr)
    edges = egnn_jax.shard_edges(Mesh(np.array(jax.devices()), ("edges",)), s, r,
                                 edge_mask=mask, edge_attr=attr)
    put = lambda a: jax.device_put(a, edges.replicated)
    four = (put(params), put(h), put(x), put(v), edges.senders, edges.receivers,
            edges.edge_mask, edges.edge_attr)
    (l1, g1), (l4, g4) = step(*one), step(*four)
    compiled = step.lower(*four).compile()
    hlo = compiled.as_text()
    out = {
        "devices": jax.device_count(),
        "edges": e,
        "padded_edges": int(edges.senders.shape[0]),
        "per_device_edges": [int(b.data.shape[0]) for b in edges.senders.addressable_shards],
        "loss": [float(l1), float(l4)],
        "max_grad_diff": max(float(jnp.max(jnp.abs(a - b)))
                             for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4))),
        "max_grad": max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g1)),
        # Op names, whatever the result's shape (a tuple has spaces) and sync or async.
        "all_reduce": len(re.findall(r"\\ball-reduce(?:-start)?\\(", hlo)),
        "all_gather": len(re.findall(r"\\ball-gather(?:-start)?\\(", hlo)),
        "other_collectives": len(re.findall(r"\\b(?:all-to-all|collective-permute)\\(", hlo)),
        "temp_one": step.lower(*one).compile().memory_analysis().temp_size_in_bytes,
        "temp_four": compiled.memory_analysis().temp_size_in_bytes,
    }

    # Edge chunks on the split edges: each device scans its own edges (edge_sharding).
    def computations(hlo):
        comps, name = {}, None
        for line in hlo.splitlines():
            head = re.match(r"(?:ENTRY )?%([\\w.\\-]+) .*\\{$", line)
            if head:
                name = head.group(1)
                comps[name] = []
            elif name is not None:
                comps[name].append(line)
        return comps

    def collectives_in_loops(hlo):
        comps = computations(hlo)
        todo = [b for lines in comps.values() for l in lines
                for b in re.findall(r"body=%([\\w.\\-]+)", l)]
        seen, found = set(), 0
        while todo:
            c = todo.pop()
            if c in seen or c not in comps:
                continue
            seen.add(c)
            for l in comps[c]:
                found += bool(re.search(r"\\b(?:all-reduce|all-gather)(?:-start)?\\(", l))
                todo += re.findall(r"(?:body|condition|calls|to_apply)=%([\\w.\\-]+)", l)
        return found, len(seen)

    ccfg = egnn_jax.EGNNConfig(32, 3, velocity=True, out_features=2, edge_chunk_size=100)

    def chunked_loss(p, h, x, v, s, r, m, a, sharding=None):
        ho, xo = egnn_jax.apply(p, ccfg, h, x, v=v, edge_attr=a, senders=s, receivers=r,
                                edge_mask=m, box=side, edge_sharding=sharding)
        return jnp.sum(ho ** 2) + jnp.sum(jnp.sin(xo))

    cstep = jax.jit(jax.value_and_grad(chunked_loss, argnums=(0, 2)),
                    static_argnames="sharding")
    (lc4, gc4) = cstep(*four, sharding=edges.edge_sharding)
    chlo = cstep.lower(*four, sharding=edges.edge_sharding).compile().as_text()
    naive_hlo = cstep.lower(*four).compile().as_text()
    in_loops, loop_computations = collectives_in_loops(chlo)
    out |= {
        "chunked_loss": float(lc4),
        "chunked_max_grad_diff": max(float(jnp.max(jnp.abs(a - b)))
                                     for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(gc4))),
        "chunked_all_gather": len(re.findall(r"\\ball-gather(?:-start)?\\(", chlo)),
        "chunked_all_reduce": len(re.findall(r"\\ball-reduce(?:-start)?\\(", chlo)),
        "chunked_collectives_in_loops": in_loops,
        "chunked_loop_computations": loop_computations,
        "naive_all_gather": len(re.findall(r"\\ball-gather(?:-start)?\\(", naive_hlo)),
    }

    # FastEGNN's real-real edges, chunked and split the same way.
    fcfg = egnn_jax.FastEGNNConfig(16, 2, virtual_channels=2, edge_chunk_size=100)
    fparams = egnn_jax.fastegnn.init(jax.random.key(1), fcfg, h, x, v=v, edge_attr=attr,
                                     senders=s, receivers=r)

    def fast_loss(p, h, x, v, s, r, m, a, sharding=None):
        o = egnn_jax.fastegnn.apply(p, fcfg, h, x, v=v, edge_attr=a, senders=s, receivers=r,
                                    edge_mask=m, edge_sharding=sharding)
        return jnp.sum(o.h ** 2) + jnp.sum(jnp.sin(o.x))

    fstep = jax.jit(jax.value_and_grad(fast_loss, argnums=(0, 2)), static_argnames="sharding")
    (lf1, gf1) = fstep(fparams, *one[1:])
    (lf4, gf4) = fstep(put(fparams), *four[1:], sharding=edges.edge_sharding)
    fhlo = fstep.lower(put(fparams), *four[1:], sharding=edges.edge_sharding).compile().as_text()
    out |= {
        "fast_loss": [float(lf1), float(lf4)],
        "fast_max_grad_diff": max(float(jnp.max(jnp.abs(a - b)))
                                  for a, b in zip(jax.tree.leaves(gf1), jax.tree.leaves(gf4))),
        "fast_max_grad": max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(gf1)),
        "fast_all_gather": len(re.findall(r"\\ball-gather(?:-start)?\\(", fhlo)),
        "fast_collectives_in_loops": collectives_in_loops(fhlo)[0],
    }
    try:  # the unpadded edge list cannot be split four ways
        egnn_jax.apply(params, ccfg, h, x, v=v, edge_attr=attr, senders=s, receivers=r,
                       edge_sharding=edges.edge_sharding)
        out["unpadded_error"] = None
    except ValueError as err:
        out["unpadded_error"] = str(err)
    print("RESULT" + json.dumps(out))
    """
)


def test_edges_split_over_four_cpu_devices_equal_one_device():
    """Loss and gradients (parameters and positions) equal the single-device ones to float32
    round-off; the compiled program all-reduces node sums and gathers no edge array; each
    device holds a quarter of the (padded) edges and well under half the temporaries. The
    same with edge chunks and `edge_sharding`, each device scanning its own edges (EGNN and
    FastEGNN)."""
    env = clean_env()
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    proc = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Involuntary full rematerialization" not in proc.stderr
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 4
    assert out["edges"] % 4 != 0 and out["padded_edges"] == out["edges"] + (-out["edges"] % 4)
    assert out["per_device_edges"] == [out["padded_edges"] // 4] * 4
    np.testing.assert_allclose(out["loss"][1], out["loss"][0], rtol=1e-5)
    assert out["max_grad_diff"] <= 1e-5 * max(out["max_grad"], 1.0)
    assert out["all_reduce"] > 0 and out["all_gather"] == 0 and out["other_collectives"] == 0
    assert out["temp_four"] < 0.5 * out["temp_one"]
    # Chunked (100 edges a chunk, ~15 chunks per device) with edge_sharding: the same loss
    # and gradients, no edge array gathered, and no collective inside the chunk loops (one
    # psum per layer, and one for the cotangents in the backward pass), where XLA's own
    # partitioning of the same program gathers the edge arrays onto every device.
    np.testing.assert_allclose(out["chunked_loss"], out["loss"][0], rtol=1e-5)
    assert out["chunked_max_grad_diff"] <= 1e-5 * max(out["max_grad"], 1.0)
    assert out["chunked_all_gather"] == 0 and out["chunked_all_reduce"] > 0
    assert out["chunked_loop_computations"] > 0 and out["chunked_collectives_in_loops"] == 0
    assert out["naive_all_gather"] > 0
    np.testing.assert_allclose(out["fast_loss"][1], out["fast_loss"][0], rtol=1e-5)
    assert out["fast_max_grad_diff"] <= 1e-5 * max(out["fast_max_grad"], 1.0)
    assert out["fast_all_gather"] == 0 and out["fast_collectives_in_loops"] == 0
    assert "not a multiple" in out["unpadded_error"]


def test_edge_sharding_is_checked():
    mesh = Mesh(np.array(jax.devices()[:1]), ("edges",))
    s, r = np.array([0, 1, 2]), np.array([1, 2, 0])
    edges = egnn_jax.shard_edges(mesh, s, r)
    assert edges.edge_sharding.spec == jax.sharding.PartitionSpec("edges")
    h, x = np.ones((3, 2), np.float32), np.eye(3, dtype=np.float32)
    config = egnn_jax.EGNNConfig(8, 1)
    params = egnn_jax.init(jax.random.key(0), config, h, x, senders=s, receivers=r)
    out = egnn_jax.apply(params, config, h, x, senders=s, receivers=r)
    split = egnn_jax.apply(
        params, config, h, x, senders=s, receivers=r, edge_sharding=edges.edge_sharding
    )
    np.testing.assert_allclose(split[0], out[0], rtol=1e-6)
    with pytest.raises(ValueError, match="for sparse graphs"):
        egnn_jax.apply(params, config, h, x, edge_sharding=edges.edge_sharding)
    with pytest.raises(TypeError, match="NamedSharding"):
        egnn_jax.apply(params, config, h, x, senders=s, receivers=r, edge_sharding="edges")
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with pytest.raises(ValueError, match="one mesh axis"):
        egnn_jax.apply(params, config, h, x, senders=s, receivers=r, edge_sharding=whole)


def test_one_device_mesh_pads_nothing_and_equals_plain_arrays():
    mesh = Mesh(np.array(jax.devices()[:1]), ("edges",))
    s, r = np.array([0, 1, 2]), np.array([1, 2, 0])
    edges = egnn_jax.shard_edges(mesh, s, r)
    np.testing.assert_array_equal(edges.senders, s)
    np.testing.assert_array_equal(edges.receivers, r)
    assert edges.edge_mask.dtype == bool and bool(edges.edge_mask.all())
    assert edges.edge_attr is None and edges.replicated.is_fully_replicated


def test_bad_edge_lists_are_named():
    mesh = Mesh(np.array(jax.devices()[:1]), ("edges",))
    with pytest.raises(ValueError, match="one length"):
        egnn_jax.shard_edges(mesh, np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match="empty"):
        egnn_jax.shard_edges(mesh, np.arange(0), np.arange(0))
    with pytest.raises(ValueError, match="edge_attr must have 3 rows"):
        egnn_jax.shard_edges(mesh, np.arange(3), np.arange(3), edge_attr=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="not one of the mesh's axes"):
        egnn_jax.shard_edges(mesh, np.arange(3), np.arange(3), axis="data")
    two_axes = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
    with pytest.raises(ValueError, match="name the one"):
        egnn_jax.shard_edges(two_axes, np.arange(3), np.arange(3))
