"""Fidelity to the reference code (vgsatorras/egnn), by independent NumPy transcriptions.

Each oracle follows the reference's own algorithm, not ours: edge lists with
``row, col = edge_index`` (messages col -> row), ``unsorted_segment_sum`` /
``unsorted_segment_mean`` (count clamped at 1), ``torch.cat`` orders, the clamps and the
literal ``_l2`` distance of the data generator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egnn_jax
from egnn_jax.experiments import nbody_charged
from egnn_jax.sim import charged_trajectory
from egnn_jax.sim._kernels import inverse_sqrt

# ---------------------------------------------------------------- reference building blocks


def silu(z):
    return z * 0.5 * (1.0 + np.tanh(0.5 * z))  # z * sigmoid(z), without overflow


def linear(p, z):
    """``nn.Linear`` with our parameters (kernel [in, out])."""
    out = z @ np.asarray(p["kernel"], np.float64)
    return out + np.asarray(p["bias"], np.float64) if "bias" in p else out


def edges(n):
    """The reference ``get_edges``: every ordered pair (row, col), row != col."""
    rows = [i for i in range(n) for j in range(n) if i != j]
    cols = [j for i in range(n) for j in range(n) if i != j]
    return np.array(rows), np.array(cols)


def segment_sum(data, ids, n):
    out = np.zeros((n, data.shape[1]))
    np.add.at(out, ids, data)
    return out


def segment_mean(data, ids, n):
    count = np.zeros((n, data.shape[1]))
    np.add.at(count, ids, np.ones_like(data))
    return segment_sum(data, ids, n) / np.maximum(count, 1)


# ---------------------------------------------------------------- E_GCL_vel / EGNN_vel


def reference_egnn_vel(params, n_layers, h, x, vel, edge_attr, norm_diff, trans_log):
    """`n_body_system/model.py: EGNN_vel` with `models/gcl.py: E_GCL_vel` layers."""
    p = params["params"]
    h, x, vel = (np.asarray(a, np.float64) for a in (h, x, vel))
    row, col = edges(h.shape[0])
    edge_attr = np.asarray(edge_attr, np.float64)[row, col]
    h = linear(p["embedding"], h)
    for i in range(n_layers):
        q = p[f"layer_{i}"]
        # coord2radial
        coord_diff = x[row] - x[col]
        radial = np.sum(coord_diff**2, axis=1, keepdims=True)
        if norm_diff:
            coord_diff = coord_diff / (np.sqrt(radial) + 1)
        # edge_model
        out = np.concatenate([h[row], h[col], radial, edge_attr], axis=1)
        edge_feat = silu(linear(q["edge_out"], silu(linear(q["edge_in"], out))))
        # coord_model: the per-edge clamp, then the mean over incoming edges
        trans = coord_diff * linear(q["coord_out"], silu(linear(q["coord_hidden"], edge_feat)))
        trans_log.append(np.abs(trans))  # before the clamp
        trans = np.clip(trans, -100, 100)
        x = x + segment_mean(trans, row, x.shape[0]) * 1.0
        # the velocity term reads h before the node update
        x = x + linear(q["vel_out"], silu(linear(q["vel_hidden"], h))) * vel
        # node_model (recurrent=True)
        agg = segment_sum(edge_feat, row, h.shape[0])
        h = h + linear(q["node_out"], silu(linear(q["node_hidden"], np.concatenate([h, agg], 1))))
    return x


@pytest.mark.parametrize("norm_diff", [False, True], ids=["plain", "norm_diff"])
def test_egnn_vel_matches_reference_e_gcl_vel_with_active_clamp(norm_diff):
    cfg = egnn_jax.EGNNConfig(
        hidden_features=16,
        num_layers=2,
        velocity=True,
        coords_clamp=100.0,
        normalize="nbody" if norm_diff else False,
    )
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(3), 5)
        h = jnp.abs(jax.random.normal(k[0], (5, 1), jnp.float64))
        x = 3.0 * jax.random.normal(k[1], (5, 3), jnp.float64)
        v = jax.random.normal(k[2], (5, 3), jnp.float64)
        q = jnp.sign(jax.random.normal(k[3], (5,), jnp.float64))
        d2 = jnp.sum((x[:, None] - x[None]) ** 2, -1)
        a = jnp.stack([q[:, None] * q[None], d2], -1)
        params = egnn_jax.init(k[4], cfg, h, x, v=v, edge_attr=a)

        # Scale phi_x's last layer until about half of the per-edge updates exceed 100.
        def scaled(gain):
            return jax.tree_util.tree_map_with_path(
                lambda path, w: w * gain if "coord_out" in jax.tree_util.keystr(path) else w,
                params,
            )

        log = []
        reference_egnn_vel(params, 2, h, x, v, a, norm_diff, log)
        base = np.median(np.concatenate([t.ravel() for t in log]))
        params = scaled(100.0 / base)
        log = []
        want = reference_egnn_vel(params, 2, h, x, v, a, norm_diff, log)
        _, got = egnn_jax.apply(params, cfg, h, x, v=v, edge_attr=a)
        _, sparse = egnn_jax.apply(
            params,
            cfg,
            h,
            x,
            v=v,
            edge_attr=egnn_jax.dense_to_sparse_edge_attr(a),
            senders=egnn_jax.complete_graph_edges(5)[0],
            receivers=egnn_jax.complete_graph_edges(5)[1],
        )
        _, unclamped = egnn_jax.apply(
            params,
            egnn_jax.EGNNConfig(**{**cfg.__dict__, "coords_clamp": None}),
            h,
            x,
            v=v,
            edge_attr=a,
        )
    clamped = np.concatenate([t.ravel() for t in log]) > 100
    assert 0.1 < clamped.mean() < 0.9, clamped.mean()  # the clamp is active, but not always
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(sparse), want, rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(np.asarray(unclamped) - want)) > 1.0  # the clamp changed the result


def test_normalize_forms_follow_the_reference_gradients():
    """ "clean" detaches the norm (egnn_clean.py: `torch.sqrt(radial).detach()`): its gradient
    is not the derivative of the forward pass. "nbody" (gcl.py, norm_diff) does not detach."""
    with jax.enable_x64(True):
        h = jnp.ones((4, 1), jnp.float64)
        x = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64)
        base = egnn_jax.EGNNConfig(hidden_features=8, num_layers=1)
        params = egnn_jax.init(jax.random.key(1), base, h, x)
        params = jax.tree_util.tree_map_with_path(
            lambda path, w: w * 1e3 if "coord_out" in jax.tree_util.keystr(path) else w, params
        )
        direction = jax.random.normal(jax.random.key(2), (4, 3), jnp.float64)

        def check(normalize):
            cfg = egnn_jax.EGNNConfig(hidden_features=8, num_layers=1, normalize=normalize)
            f = lambda x: jnp.sum(egnn_jax.apply(params, cfg, h, x)[1] ** 2)
            autodiff = float(jnp.sum(jax.grad(f)(x) * direction))
            eps = 1e-6
            numeric = float((f(x + eps * direction) - f(x - eps * direction)) / (2 * eps))
            return autodiff, numeric

        for form in ("nbody", False):
            autodiff, numeric = check(form)
            assert autodiff == pytest.approx(numeric, rel=1e-6), form
        autodiff, numeric = check("clean")
        assert abs(autodiff - numeric) > 1e-3 * abs(numeric)
        assert check(True) == (autodiff, numeric)


# ---------------------------------------------------------------- GNN baseline


def reference_gnn(params, n_layers, nodes, edge_attr):
    """`n_body_system/model.py: GNN` with `models/gcl.py: GCL(recurrent=True)` layers."""
    p = params["params"]
    nodes = np.asarray(nodes, np.float64)
    row, col = edges(nodes.shape[0])
    e = np.asarray(edge_attr, np.float64)[row, col]
    h = linear(p["embedding"], nodes)
    width = h.shape[1]
    for i in range(n_layers):
        kernel = np.asarray(p[f"edge_in_{i}_kernel"], np.float64)
        edge_in = {"kernel": kernel, "bias": p[f"edge_in_{i}_bias"]}
        m = silu(
            linear(
                p[f"edge_out_{i}"], silu(linear(edge_in, np.concatenate([h[row], h[col], e], 1)))
            )
        )
        agg = segment_sum(m, row, h.shape[0])
        out = linear(
            p[f"node_out_{i}"], silu(linear(p[f"node_hidden_{i}"], np.concatenate([h, agg], 1)))
        )
        h = out + h
        assert h.shape[1] == width
    return linear(p["decoder"], silu(linear(p["decoder_hidden"], h)))


def test_gnn_matches_reference_gnn():
    cfg = nbody_charged.NBodyExperimentConfig(hidden_features=16, num_layers=3)
    spec = nbody_charged.EXPERIMENT.model_spec("gnn", cfg)
    with jax.enable_x64(True):
        x0 = jax.random.normal(jax.random.key(0), (1, 5, 3), jnp.float64)
        v0 = jax.random.normal(jax.random.key(1), (1, 5, 3), jnp.float64)
        q = jnp.array([[1.0, -1.0, 1.0, 1.0, -1.0]], jnp.float64)
        batch = {
            "x0": x0,
            "gnn_node": jnp.concatenate([x0, v0], -1),
            "gnn_edge": (q[:, :, None] * q[:, None, :])[..., None],
        }
        params = jax.tree.map(lambda a: a.astype(jnp.float64), spec.init(jax.random.key(2), batch))
        got = spec.predict(params, batch)[0]
    want = reference_gnn(params, 3, batch["gnn_node"][0], batch["gnn_edge"][0])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- initialisation


def _check_uniform(name, w, bound):
    w = np.asarray(w, np.float64).ravel()
    assert np.max(np.abs(w)) <= bound * (1 + 1e-6), (name, np.max(np.abs(w)), bound)
    if w.size >= 1000:  # uniform on [-b, b]: max near b, std b / sqrt(3)
        assert np.max(np.abs(w)) > 0.99 * bound, name
        assert abs(np.std(w) / (bound / np.sqrt(3)) - 1) < 0.08, name


def test_initialisation_bounds_are_pytorch_linear_and_xavier():
    """`nn.Linear`: kernel and bias U(+-1/sqrt(fan_in)); phi_x's last layer (and the Radial
    Field's phi): Xavier-uniform with gain 0.001, U(+-0.001 sqrt(6 / (fan_in + fan_out)))."""
    width, f, a = 64, 1, 2
    cfg = egnn_jax.EGNNConfig(hidden_features=width, num_layers=2, velocity=True)
    h, x = jnp.ones((5, f)), jnp.zeros((5, 3))
    params = egnn_jax.init(jax.random.key(0), cfg, h, x, v=x, edge_attr=jnp.ones((5, 5, a)))[
        "params"
    ]
    fan_in = {
        "embedding": f,
        "edge_in": 2 * width + 1 + a,
        "edge_out": width,
        "coord_hidden": width,
        "node_hidden": 2 * width,
        "node_out": width,
        "vel_hidden": width,
        "vel_out": width,
    }
    for layer in ("layer_0", "layer_1"):
        for name, fan in fan_in.items():
            if name == "embedding":
                continue
            for kind in ("kernel", "bias"):
                _check_uniform(f"{layer}/{name}/{kind}", params[layer][name][kind], fan**-0.5)
        coord = params[layer]["coord_out"]
        assert set(coord) == {"kernel"}  # no bias, as the reference
        _check_uniform(f"{layer}/coord_out", coord["kernel"], 0.001 * np.sqrt(6 / (width + 1)))
        assert np.max(np.abs(coord["kernel"])) > 0.5 * 0.001 * np.sqrt(6 / (width + 1))
    for kind in ("kernel", "bias"):
        _check_uniform(f"embedding/{kind}", params["embedding"][kind], f**-0.5)

    # The baselines, through the registry.
    cfg = nbody_charged.NBodyExperimentConfig()
    x0 = jax.random.normal(jax.random.key(1), (1, 5, 3))
    batch = nbody_charged.featurise(x0, x0, jnp.ones((1, 5)), x0)
    gnn = nbody_charged.EXPERIMENT.model_spec("gnn", cfg).init(jax.random.key(2), batch)["params"]
    _check_uniform("gnn/edge_in_0_kernel", gnn["edge_in_0_kernel"], (2 * width + 1) ** -0.5)
    _check_uniform("gnn/embedding", gnn["embedding"]["kernel"], 6**-0.5)
    _check_uniform("gnn/node_hidden_0", gnn["node_hidden_0"]["kernel"], (2 * width) ** -0.5)
    rf = nbody_charged.EXPERIMENT.model_spec("radial_field", cfg)
    rf = rf.init(jax.random.key(3), batch)["params"]
    _check_uniform("rf/phi_hidden_0", rf["phi_hidden_0"]["kernel"], 3**-0.5)
    _check_uniform("rf/phi_0", rf["phi_0"]["kernel"], 0.001 * np.sqrt(6 / (width + 1)))
    _check_uniform("rf/vel_hidden_0", rf["vel_hidden_0"]["kernel"], 1.0)


# ---------------------------------------------------------------- the charged generator


def reference_sample_trajectory(loc, vel, charges, T, sample_freq, max_f=0.1 / 0.001):
    """`synthetic_sim.py: ChargedParticlesSim.sample_trajectory`, its loop as written,
    with its `_l2` distance (|A|^2 + |B|^2 - 2 A.B), for given initial conditions."""

    def l2(A, B):
        A_norm = (A**2).sum(axis=1).reshape(A.shape[0], 1)
        B_norm = (B**2).sum(axis=1).reshape(1, B.shape[0])
        return A_norm + B_norm - 2 * A.dot(B.transpose())

    def forces(loc_next, edges, n):
        with np.errstate(divide="ignore", invalid="ignore"):  # the diagonal, overwritten
            l2_dist_power3 = np.power(l2(loc_next.transpose(), loc_next.transpose()), 3.0 / 2.0)
            forces_size = 1.0 * edges / l2_dist_power3
        np.fill_diagonal(forces_size, 0)
        F = (
            forces_size.reshape(1, n, n)
            * np.concatenate(
                [
                    np.subtract.outer(loc_next[d, :], loc_next[d, :]).reshape(1, n, n)
                    for d in range(3)
                ]
            )
        ).sum(axis=-1)
        F[F > max_f] = max_f
        F[F < -max_f] = -max_f
        return F

    n = charges.shape[0]
    charges = charges.reshape(n, 1)
    edges = charges.dot(charges.transpose())
    T_save = int(T / sample_freq - 1)
    loc_out, vel_out = np.zeros((T_save, 3, n)), np.zeros((T_save, 3, n))
    loc_next, vel_next = loc.T.copy(), vel.T.copy()
    counter = 0
    vel_next += 0.001 * forces(loc_next, edges, n)
    for i in range(1, T):
        loc_next += 0.001 * vel_next
        if i % sample_freq == 0:
            loc_out[counter], vel_out[counter] = loc_next, vel_next
            counter += 1
        vel_next += 0.001 * forces(loc_next, edges, n)
    return loc_out.transpose(0, 2, 1), vel_out.transpose(0, 2, 1)


def test_charged_simulator_matches_reference_l2_loop_at_frames_30_and_40():
    rng = np.random.RandomState(43)
    for _ in range(3):
        q = rng.choice([-1.0, 1.0], size=5)
        x0 = rng.randn(5, 3)
        v0 = rng.randn(5, 3)
        v0 *= 0.5 / np.linalg.norm(v0, axis=1, keepdims=True)
        ref_x, ref_v = reference_sample_trajectory(x0, v0, q, T=4200, sample_freq=100)
        with jax.enable_x64(True):
            x, v = charged_trajectory(x0, v0, q, n_frames=41, save_every=100)
        for frame in (30, 40):
            # The reference's |A|^2 + |B|^2 - 2 A.B cancels digits that the direct
            # difference keeps; 4,100 steps of the dynamics grow that to up to ~3e-8 here.
            np.testing.assert_allclose(np.asarray(x)[frame], ref_x[frame], rtol=0, atol=1e-7)
            np.testing.assert_allclose(np.asarray(v)[frame], ref_v[frame], rtol=0, atol=1e-7)


def test_inverse_sqrt_is_correctly_rounded():
    """The simulators' 1/sqrt equals IEEE sqrt then division bit for bit (an `rsqrt` that
    XLA lowers to an approximation would not, on AVX-512 machines)."""
    with jax.enable_x64(True):
        x = np.random.default_rng(0).uniform(1e-3, 1e3, size=4096)
        got = np.asarray(jax.jit(inverse_sqrt)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, 1.0 / np.sqrt(x))
