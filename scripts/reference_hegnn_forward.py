"""Our committed HEGNN models, loaded into the authors' PyTorch `HEGNN`: the same predictions?

Each committed `hegnn_l<L>` of `experiments/results/nbody_scale/<N>/best/` is copied,
weight by weight, into `models/HEGNN.py: HEGNN` of a GLAD-RUC/HEGNN checkout (its e3nn
spherical harmonics and tensor products, its scatter means; nothing of theirs is copied
here), and both predict frame 40 of every system of our test split. If our port is the
authors' model, the two predictions agree to float32 rounding and both score the MSE of our
`metrics.json`. Needs PyTorch, e3nn and torch_geometric in the project's venv::

    .venv/bin/pip install torch==2.13.0 e3nn torch_geometric
    python -m egnn_jax.experiments.nbody_scale --bodies 5 --export test /tmp/test.npz
    python scripts/reference_hegnn_forward.py --reference /tmp/HEGNN --data /tmp/test.npz \\
        --bodies 5 --out experiments/results/nbody_scale/5/reference_code/forward.json

`torch_scatter` is replaced by a stand-in where it is not installed, as in
`scripts/reference_nbody_scale.py`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
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
from reference_nbody_scale import install_shims  # noqa: E402

from egnn_jax.experiments import nbody_scale  # noqa: E402
from egnn_jax.experiments._models import HEGNN_DEGREES  # noqa: E402

# Our module name -> the reference's `BaseMLP` (two linear layers: `mlp.0`, `mlp.2`).
LAYER_MLPS = {
    "mlp_msg": ("edge_in", "edge_out"),
    "mlp_pos": ("coord_hidden", "coord_out"),
    "mlp_sh": ("steer_hidden", "steer_out"),
    "mlp_vel": ("vel_hidden", "vel_out"),
    "mlp_node_feat": ("node_hidden", "node_out"),
}


def torch_state(params: dict, num_layers: int) -> dict:
    """Our parameter tree as the reference's state dict (`nn.Linear` weight = kernel.T)."""
    p = params["params"]
    state = {}
    put = functools.partial(put_linear, state)
    put("embedding", p["embedding"])
    put("sh_init.mlp_sh.mlp.0", p["steerable_init"]["edge_in"])
    put("sh_init.mlp_sh.mlp.2", p["steerable_init"]["edge_out"])
    for i in range(num_layers):
        for mlp, (first, second) in LAYER_MLPS.items():
            put(f"layers.{i}.{mlp}.mlp.0", p[f"layer_{i}"][first])
            put(f"layers.{i}.{mlp}.mlp.2", p[f"layer_{i}"][second])
    return state


def torch_predict(model, batch: dict, chunk: int = 500) -> np.ndarray:
    """The reference's forward on complete graphs (`edge_index` row = receiver i)."""
    import torch

    s, n, _ = batch["x0"].shape
    rows, cols = np.nonzero(~np.eye(n, dtype=bool))
    out = []
    for start in range(0, s, chunk):
        part = slice(start, min(start + chunk, s))
        b = batch["x0"][part].shape[0]
        offset = (np.arange(b) * n)[:, None]
        edge_index = torch.tensor(np.stack([(rows + offset).ravel(), (cols + offset).ravel()]))
        edge_attr = torch.tensor(batch["edge_attr"][part][:, rows, cols].reshape(-1, 2))
        h, x, v = (
            torch.tensor(np.ascontiguousarray(batch[k][part]).reshape(b * n, -1))
            for k in ("node_feat", "x0", "v0")
        )
        with torch.no_grad():
            x = model(h, x, v, edge_index, edge_attr)
        out.append(x.numpy().reshape(b, n, 3))
    return np.concatenate(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="a checkout of GLAD-RUC/HEGNN"
    )
    parser.add_argument("--data", type=Path, required=True, help="our exported test split")
    parser.add_argument("--bodies", type=int, default=5)
    parser.add_argument("--models", default=",".join(HEGNN_DEGREES))
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args(argv)

    import torch

    install_shims(Path(tempfile.mkdtemp(prefix="reference_shims_")))
    sys.path.insert(0, str(args.reference.resolve()))
    import e3nn.o3  # noqa: F401  (HEGNN.py reads e3nn.o3)
    from models.HEGNN import HEGNN

    workdir = Path("experiments/results/nbody_scale") / str(args.bodies)
    data = dict(np.load(args.data))
    batch = nbody_scale.featurise(data["x0"], data["v0"], data["q"], data["xT"])
    results = {}
    for name in args.models.split(","):
        spec, params, recorded = committed_model(workdir, name, batch)
        mine = predict(spec, params, batch)
        torch.manual_seed(0)
        model = HEGNN(
            num_layer=spec.num_layers,
            node_input_dim=2,
            edge_attr_dim=2,
            hidden_dim=spec.hidden_features,
            max_ell=dict(spec.options)["max_degree"],
        )
        state = torch_state(params, spec.num_layers)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # The tensor products take their weights per edge (shared_weights=False): what is left
        # unloaded are their empty weight and output-mask buffers.
        left = [k for k in missing if not k.endswith(("sh_coff.weight", "sh_coff.output_mask"))]
        if left or unexpected:
            raise RuntimeError(f"state dict mismatch: missing {left}, unexpected {unexpected}")
        theirs = torch_predict(model, batch)
        results[name] = comparison(mine, theirs, batch["target"], recorded)
        print(name, json.dumps(results[name]))
    atomic_write_json(
        args.out,
        {
            "reference": "GLAD-RUC/HEGNN models/HEGNN.py",
            "reference_commit": git_commit(args.reference),
            "torch": torch.__version__,
            "bodies": args.bodies,
            "models": results,
        },
    )


if __name__ == "__main__":
    main()
