"""Our committed FastEGNN models, loaded into the authors' PyTorch `FastEGNN`: the same predictions?

The committed `fastegnn` of `experiments/results/nbody_scale/<N>/best/` is copied, weight by
weight, into `models/FastEGNN.py: FastEGNN` of a GLAD-RUC/FastEGNN checkout (nothing of
theirs is copied here), and both predict frame 40 of every system of our test split on the
same real-real edges (each system's shortest half, `egnn_jax.shortest_edges`, the edges our
experiment uses), with the virtual nodes starting at each system's centre of mass as the
authors' N-body script starts them. If our port is the authors' model, both agree to float32
rounding and score the MSE of our `metrics.json`. Needs PyTorch and torch_geometric in the
project's venv (see `scripts/reference_hegnn_forward.py`)::

    python -m egnn_jax.experiments.nbody_scale --bodies 20 --export test /tmp/test20.npz
    python scripts/reference_fastegnn_forward.py --reference /tmp/FastEGNN \\
        --data /tmp/test20.npz --bodies 20 \\
        --out experiments/results/nbody_scale/20/reference_code/forward_fastegnn.json

One layout differs: the reference's node MLP reads the C virtual messages flattened as
`[H, C]` (feature-major), ours as `[C, H]`; the weights are permuted to match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _reference import (  # noqa: E402
    atomic_write_json,
    committed_model,
    comparison,
    git_commit,
    predict,
    put_linear,
)

import egnn_jax  # noqa: E402
from egnn_jax.experiments import nbody_scale  # noqa: E402
from egnn_jax.experiments._models import MODEL_KINDS  # noqa: E402

# Ours -> the reference's `nn.Sequential` layers ("<module>.<index>") in each `E_GCL_vel`.
LAYER_LINEARS = {
    "edge_in": "edge_mlp.0",
    "edge_out": "edge_mlp.2",
    "virtual_edge_in": "edge_mlp_virtual.0",
    "virtual_edge_out": "edge_mlp_virtual.2",
    "coord_hidden": "coord_mlp_r.0",
    "coord_out": "coord_mlp_r.2",
    "virtual_coord_hidden": "coord_mlp_r_virtual.0",
    "virtual_coord_out": "coord_mlp_r_virtual.2",
    "virtual_position_hidden": "coord_mlp_v_virtual.0",
    "virtual_position_out": "coord_mlp_v_virtual.2",
    "vel_hidden": "coord_mlp_vel.0",
    "vel_out": "coord_mlp_vel.2",
    "node_hidden": "node_mlp.0",
    "node_out": "node_mlp.2",
    "virtual_node_hidden": "node_mlp_virtual.0",
    "virtual_node_out": "node_mlp_virtual.2",
}


def torch_state(params: dict, cfg) -> dict:
    """Our parameter tree as the reference's state dict (`nn.Linear` weight = kernel.T)."""
    import torch

    p = params["params"]
    width, c = cfg.hidden_features, cfg.virtual_channels
    virtual = np.asarray(p["virtual_features"]).T[None]  # ours [C, H]; theirs [1, H, C]
    state = {"virtual_node_feat": torch.tensor(np.ascontiguousarray(virtual))}
    put_linear(state, "embedding_in", p["embedding"])
    for i in range(cfg.num_layers):
        for ours, theirs in LAYER_LINEARS.items():
            dense = p[f"layer_{i}"][ours]
            kernel = np.asarray(dense["kernel"])
            if ours == "node_hidden":  # rows [h, m_i, (c, h') c-major] -> [h, m_i, (h', c)]
                head, tail = kernel[: 2 * width], kernel[2 * width :]
                tail = tail.reshape(c, width, -1).transpose(1, 0, 2).reshape(c * width, -1)
                kernel = np.concatenate([head, tail])
            put_linear(state, f"gcl_{i}.{theirs}", dense, kernel)
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="a checkout of GLAD-RUC/FastEGNN"
    )
    parser.add_argument("--data", type=Path, required=True, help="our exported test split")
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=250, help="systems per forward pass")
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(args.reference.resolve()))
    from models.FastEGNN import FastEGNN

    workdir = Path("experiments/results/nbody_scale") / str(args.bodies)
    data = dict(np.load(args.data))
    batch = nbody_scale.featurise(data["x0"], data["v0"], data["q"], data["xT"])
    spec, params, recorded = committed_model(workdir, "fastegnn", batch)
    kind = MODEL_KINDS["fastegnn"]
    cfg = kind.config(spec)
    mine = predict(spec, params, batch, args.chunk)
    # The same real-real edges as the experiment's model, for the reference.
    keep = kind.option(spec, "keep_fraction")
    edges_of = jax.jit(jax.vmap(lambda x: egnn_jax.shortest_edges(x, keep)))

    torch.manual_seed(0)
    model = FastEGNN(
        node_feat_nf=2,
        node_attr_nf=0,
        edge_attr_nf=2,
        hidden_nf=cfg.hidden_features,
        virtual_channels=cfg.virtual_channels,
        n_layers=cfg.num_layers,
    )
    model.load_state_dict(torch_state(params, cfg), strict=True)

    theirs = []
    s, n, _ = batch["x0"].shape
    for start in range(0, s, args.chunk):
        part = {k: batch[k][start : start + args.chunk] for k in batch}
        b = part["x0"].shape[0]
        edges = edges_of(jnp.asarray(part["x0"]))
        senders, receivers, mask = (
            np.asarray(a) for a in (edges.senders, edges.receivers, edges.edge_mask)
        )
        system = np.broadcast_to(np.arange(b)[:, None], mask.shape)[mask]
        rows, cols = receivers[mask], senders[mask]  # the reference aggregates onto row
        edge_index = torch.tensor(np.stack([rows + system * n, cols + system * n]))
        edge_attr = torch.tensor(part["edge_attr"][system, rows, cols])
        flat = {k: torch.tensor(part[k].reshape(b * n, -1)) for k in ("node_feat", "x0", "v0")}
        loc_mean = torch.tensor(part["x0"].mean(axis=1))[:, :, None].repeat(
            1, 1, cfg.virtual_channels
        )
        data_batch = torch.arange(b).repeat_interleave(n)
        with torch.no_grad():
            x, _ = model(
                flat["node_feat"],
                flat["x0"],
                flat["v0"],
                edge_index,
                data_batch,
                loc_mean,
                edge_attr=edge_attr,
            )
        theirs.append(x.numpy().reshape(b, n, 3))
    result = comparison(mine, np.concatenate(theirs), batch["target"], recorded)
    print(json.dumps(result))
    atomic_write_json(
        args.out,
        {
            "reference": "GLAD-RUC/FastEGNN models/FastEGNN.py",
            "reference_commit": git_commit(args.reference),
            "torch": torch.__version__,
            "bodies": args.bodies,
            "models": {"fastegnn": result},
        },
    )


if __name__ == "__main__":
    main()
