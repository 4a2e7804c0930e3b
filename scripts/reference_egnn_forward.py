"""Our committed EGNN-vel, loaded into the EGNN authors' PyTorch `EGNN_vel`: the same predictions?

The committed `egnn_vel` of an N-body workdir (default: the EGNN paper's task on the paper's
data, `experiments/results/nbody_charged/paper_data`) is copied, weight by weight, into
`n_body_system/model.py: EGNN_vel` of a vgsatorras/egnn checkout (`models/gcl.py:
E_GCL_vel` layers, recurrent, as its `main_nbody.py` builds it; nothing of theirs is copied
here). Both predict the target frame of every system of the exported test split from the
inputs `main_nbody.py` gives (node |v|, edges [q_i q_j, |x_i - x_j|^2], complete graph). If
our port is the authors' model, both agree to float32 rounding and score the test MSE of
`metrics.json`. Needs PyTorch in the project's venv (`pip install torch==2.13.0`)::

    W=experiments/results/nbody_charged/paper_data
    python -m egnn_jax.experiments.nbody_charged --workdir $W --sampler numpy-legacy \\
        --seed 43 --export test /tmp/paper_test.npz
    python scripts/reference_egnn_forward.py --reference /tmp/egnn --data /tmp/paper_test.npz \\
        --workdir $W --out $W/reference_code/forward.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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

from egnn_jax.experiments import nbody_charged  # noqa: E402

# Ours -> the reference's `nn.Sequential` layers in each `E_GCL_vel`.
LAYER_LINEARS = {
    "edge_in": "edge_mlp.0",
    "edge_out": "edge_mlp.2",
    "node_hidden": "node_mlp.0",
    "node_out": "node_mlp.2",
    "coord_hidden": "coord_mlp.0",
    "coord_out": "coord_mlp.2",
    "vel_hidden": "coord_mlp_vel.0",
    "vel_out": "coord_mlp_vel.2",
}


def torch_state(params: dict, num_layers: int) -> dict:
    """Our parameter tree as the reference's state dict (`nn.Linear` weight = kernel.T)."""
    p = params["params"]
    state = {}
    put_linear(state, "embedding", p["embedding"])
    for i in range(num_layers):
        for ours, theirs in LAYER_LINEARS.items():
            put_linear(state, f"gcl_{i}.{theirs}", p[f"layer_{i}"][ours])
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="a checkout of vgsatorras/egnn"
    )
    parser.add_argument("--data", type=Path, required=True, help="our exported test split")
    parser.add_argument(
        "--workdir", type=Path, default=Path("experiments/results/nbody_charged/paper_data")
    )
    parser.add_argument("--model", default="egnn_vel")
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(args.reference.resolve()))
    from n_body_system.model import EGNN_vel

    data = dict(np.load(args.data))
    batch = nbody_charged.featurise(data["x0"], data["v0"], data["q"], data["xT"])
    batch = {k: np.asarray(a) for k, a in batch.items()}
    spec, params, recorded = committed_model(args.workdir, args.model, batch)
    if spec.kind != "egnn" or dict(spec.options) != {"velocity": True}:
        raise SystemExit(f"{args.model} is not the EGNN-vel of the paper: {spec}")
    mine = predict(spec, params, batch)

    torch.manual_seed(0)
    model = EGNN_vel(
        in_node_nf=1,
        in_edge_nf=2,
        hidden_nf=spec.hidden_features,
        n_layers=spec.num_layers,
        recurrent=True,
    )
    model.load_state_dict(torch_state(params, spec.num_layers), strict=True)
    s, n, _ = batch["x0"].shape
    rows, cols = np.nonzero(~np.eye(n, dtype=bool))  # the reference's get_edges order
    offset = (np.arange(s) * n)[:, None]
    edges = [torch.tensor((rows + offset).ravel()), torch.tensor((cols + offset).ravel())]
    edge_attr = torch.tensor(batch["edge_attr"][:, rows, cols].reshape(-1, 2))
    flat = {k: torch.tensor(batch[k].reshape(s * n, -1)) for k in ("node_feat", "x0", "v0")}
    with torch.no_grad():
        theirs = (
            model(flat["node_feat"], flat["x0"], edges, flat["v0"], edge_attr)
            .numpy()
            .reshape(s, n, 3)
        )

    result = comparison(mine, theirs, batch["target"], recorded)
    print(json.dumps(result))
    atomic_write_json(
        args.out,
        {
            "reference": "vgsatorras/egnn n_body_system/model.py EGNN_vel",
            "reference_commit": git_commit(args.reference),
            "torch": torch.__version__,
            "workdir": str(args.workdir),
            "models": {args.model: result},
        },
    )


if __name__ == "__main__":
    main()
