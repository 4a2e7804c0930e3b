"""Reporting shared by the experiments: machine and versions, loss curves, tables, PNGs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import jax

from egnn_jax._atomic import atomic_open, save_json_atomic

from ._models import label

__all__ = [
    "device",
    "epochs_table",
    "markdown_table",
    "plot_loss_curves",
    "save_figure_atomic",
    "save_json_atomic",
    "steps_per_second",
    "versions",
]


def steps_per_second(history: list[dict]) -> float | None:
    """Steady-state rate between the first and last evaluation (excludes compilation)."""
    if len(history) < 2:
        return None
    dt = history[-1]["wall_time"] - history[0]["wall_time"]
    return (history[-1]["step"] - history[0]["step"]) / dt if dt > 0 else None


def save_figure_atomic(fig, path: str | os.PathLike) -> Path:
    """Write a Matplotlib figure as PNG through `atomic_open`; returns the path."""
    path = Path(path)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def epochs_table(rows, labels: dict, score_header: str) -> str:
    """The table of a published benchmark trained in epochs: test MSE x 1e-2 beside the
    published figure, the epochs run, the best epoch, early stopping and forward time.

    Arguments:
        rows: ``[(name, row of metrics.json)]`` in display order (rows with
            ``published_test_mse`` and ``forward_ms_per_batch``).
        labels: display names; score_header: the test-MSE column's header.
    """
    header = [
        "model",
        score_header,
        "published",
        "epochs",
        "best epoch",
        "stopped early",
        "forward ms / 100 systems",
    ]
    body = []
    for name, r in rows:
        trained = "epochs_done" in r
        pub = r.get("published_test_mse")
        body.append(
            [
                labels.get(name, name),
                f"{100 * r['test_mse']:.2f}",
                "-" if pub is None else f"{100 * pub:.2f}",
                f"{r['epochs_done']:,.0f}" if trained else "-",
                f"{r['best_epoch']:,.0f}" if trained else "-",
                ("yes" if r.get("stopped_early") else "no") if trained else "-",
                f"{r['forward_ms_per_batch']:.2f}",
            ]
        )
    return markdown_table(header, body)


def plot_loss_curves(
    path: Path, histories: dict, val_mse: dict, *, title: str, x_key: str = "step"
) -> None:
    """Training loss (solid; a model's MSE plus any regulariser it trains with, e.g. EGHN's
    cut loss) and validation MSE (dashed) per model, log scale; fitted models as lines.

    `x_key` picks the x axis from the history entries (``"step"`` or ``"epoch"``).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, hist in histories.items():
        xs = [h.get(x_key, h["step"]) for h in hist]
        (line,) = ax.plot(xs, [h["train_loss"] for h in hist], label=f"{label(name)} train")
        ax.plot(
            xs,
            [h["val_loss"] for h in hist],
            "--",
            color=line.get_color(),
            label=f"{label(name)} val",
        )
    for name, value in val_mse.items():
        if name not in histories:
            ax.axhline(value, color="gray", linestyle=":", label=f"{label(name)} val")
    ax.set_yscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel("train loss (solid), validation MSE (dashed)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save_figure_atomic(fig, path)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in (
        "egnn-jax",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "diffrax",
        "orbax-checkpoint",
        "numpy",
        "matplotlib",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device() -> dict:
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "description": str(dev),
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
    }
