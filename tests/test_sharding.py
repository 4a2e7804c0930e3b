"""Data-parallel training over a device mesh: same results as one device, recorded devices.

Several CPU devices exist only when XLA is told so before JAX starts, so the multi-device
checks run in a child process with ``--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import clean_env

from egnn_jax.experiments import train
from egnn_jax.experiments._sharding import data_parallel


def _problem(**overrides):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5,))).astype(np.float32)

    def loss(p, b, info):
        return jnp.mean((jnp.tanh(b["x"] @ p["w"]) @ p["v"] - b["y"]) ** 2)

    def evaluate(p, d):
        return {"val_loss": loss(p, d, None)}

    params = {
        "w": jnp.asarray(rng.normal(size=(5, 16)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(16,)), jnp.float32),
    }
    data = {"x": x, "y": y}
    return (
        dict(
            name="run",
            loss_fn=loss,
            params=params,
            train_data=data,
            eval_fn=evaluate,
            val_data=data,
            key=jax.random.key(0),
            num_steps=40,
            batch_size=16,
            eval_every=10,
            progress=False,
        )
        | overrides
    )


def test_one_device_mesh_equals_the_default_device():
    plain = train(**_problem())
    meshed = train(**_problem(devices=1))
    assert plain.devices is None
    assert meshed.devices["count"] == 1 and meshed.devices["mesh"] == {"data": 1}
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(meshed.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("devices", [0, -1, 2, True, 1.5])
def test_bad_device_counts_are_named(devices):
    with pytest.raises(ValueError, match="devices"):
        train(**_problem(devices=devices))
    with pytest.raises(ValueError, match="devices"):
        data_parallel(devices)


_FOUR_DEVICES = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from test_sharding import _problem
    from egnn_jax.experiments import three_body, train
    from egnn_jax.experiments._step import make_optimizer, make_train_chunk, init_train_state
    from egnn_jax.experiments._sharding import data_parallel

    out = {{"devices": jax.device_count()}}
    one, four = train(**_problem()), train(**_problem(devices=4))
    out["losses"] = [[h["train_loss"] for h in r.history] for r in (one, four)]
    out["max_param_diff"] = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params))
    )
    sharding = four.params["w"].sharding
    out["replicated_on"] = len(sharding.device_set) if sharding.is_fully_replicated else 0
    out["result_devices"] = four.devices
    try:
        train(**_problem(devices=4, batch_size=10))
    except ValueError as e:
        out["indivisible"] = str(e)

    # The compiled chunk splits the batch: each device computes on 16 / 4 samples and the
    # gradients meet in an all-reduce.
    layout = data_parallel(4)
    p = _problem()
    opt = make_optimizer()
    chunk = make_train_chunk(p["loss_fn"], opt, batch_size=16, n_train=64, chunk_len=1,
                             batch_sharding=layout.batch)
    state = layout.put(init_train_state(p["params"], opt, p["key"]))
    hlo = chunk.lower(state, layout.put(p["train_data"])).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    out["per_device_batch"] = "f32[4,5]" in hlo

    # A whole experiment through its command line, on 2 devices and on 1.
    workdir = {workdir!r}
    common = ["--quick", "--models", "egnn_vel", "--iterations", "100", "--no-progress",
              "--n-trajectories", "200",
              "--data-dir", workdir + "/data"]
    out["codes"] = [
        three_body.main([*common, "--workdir", workdir + "/one"]),
        three_body.main([*common, "--workdir", workdir + "/two", "--devices", "2"]),
    ]
    for name in ("one", "two"):
        out[name] = json.load(open(workdir + "/" + name + "/metrics.json"))
        out[name].pop("histories")
    print("RESULT" + json.dumps(out))
    """
)


def test_four_cpu_devices_train_like_one(tmp_path):
    env = clean_env()
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    script = _FOUR_DEVICES.format(tests=str(Path(__file__).parent), workdir=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 4
    np.testing.assert_allclose(out["losses"][1], out["losses"][0], rtol=1e-5)
    assert out["max_param_diff"] < 1e-5
    assert out["replicated_on"] == 4
    assert out["result_devices"]["count"] == 4
    assert out["result_devices"]["mesh"] == {"data": 4}
    assert "multiple of devices=4" in out["indivisible"]
    assert out["all_reduce"] and out["per_device_batch"]

    assert out["codes"] == [0, 0]
    one, two = out["one"], out["two"]
    assert one["devices"]["count"] == 1 and one["devices"]["mesh"] is None
    assert two["devices"]["count"] == 2 and two["devices"]["mesh"] == {"data": 2}
    assert two["models"]["egnn_vel"]["devices"]["ids"] == [0, 1]
    # Same data, same seeds: the same model up to the order of the gradient sums.
    a, b = one["models"]["egnn_vel"], two["models"]["egnn_vel"]
    assert a["best_step"] == b["best_step"]
    np.testing.assert_allclose(b["test_mse"], a["test_mse"], rtol=1e-3)
    assert a["fingerprint"] == b["fingerprint"]  # the device count is not part of a run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    """Two local CPU processes joined by `jax.distributed` (one device each, gloo collectives)
    train a whole experiment like one process with two devices: same fingerprints, same best
    step, test MSE to float32 round-off; metrics.json records both processes."""
    common = [
        sys.executable,
        "-m",
        "egnn_jax.experiments.three_body",
        "--quick",
        "--models",
        "egnn_vel",
        "--iterations",
        "100",
        "--n-trajectories",
        "200",
        "--no-progress",
        "--data-dir",
        str(tmp_path / "data"),
        "--devices",
        "2",
    ]
    env = clean_env()
    one_env = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2")
    single = subprocess.run(
        [*common, "--workdir", str(tmp_path / "one")],
        env=one_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                *common,
                "--workdir",
                str(tmp_path / "two"),
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["devices"]["processes"] == 2 and two["devices"]["count"] == 2
    assert one["devices"]["processes"] == 1 and one["devices"]["count"] == 2
    a, b = one["models"]["egnn_vel"], two["models"]["egnn_vel"]
    assert a["fingerprint"] == b["fingerprint"] and a["best_step"] == b["best_step"]
    np.testing.assert_allclose(b["test_mse"], a["test_mse"], rtol=1e-3)
