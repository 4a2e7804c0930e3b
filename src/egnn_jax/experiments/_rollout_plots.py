"""Figures of the rollout experiment: error and energy against time, and trajectories."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._report import save_figure_atomic

__all__ = ["plot_curves", "plot_trajectories"]


def _finite(curve):
    return np.array([np.nan if c is None or not math.isfinite(c) else c for c in curve], float)


def plot_curves(workdir: Path, config, metrics: dict, labels: dict) -> None:
    """``mse_vs_time.png`` and ``energy_vs_time.png``: every model on the test split and, for
    the three-body system, on the longer test set; the training horizon marked."""
    from matplotlib.figure import Figure

    rows = {n: metrics["models"][n] for n in labels if n in metrics["models"]}
    for key, ylabel, out in (
        ("mse_curve", "position MSE", "mse_vs_time.png"),
        ("energy_curve", "median |E(pred) - E(true)| / |E(true)|", "energy_vs_time.png"),
    ):
        fig = Figure(figsize=(7.5, 4.5))
        ax = fig.subplots()
        for i, (name, row) in enumerate(rows.items()):
            color = f"C{i}"
            for prefix, style in (("long_", ":"), ("test_", "-")):
                curve = row.get(prefix + key)
                if curve is None:
                    continue
                t = np.arange(len(curve)) * config.dt
                label = labels[name] if prefix == "test_" else None
                ax.plot(t[1:], _finite(curve)[1:], style, color=color, label=label, lw=1.2)
        ax.axvline(config.dt * (config.frames - 1), color="gray", ls="--", lw=0.8)
        ax.text(
            config.dt * (config.frames - 1),
            0.98,
            " training horizon",
            color="gray",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
        )
        ax.set_yscale("log")
        ax.set_xlabel(
            "t"
            + (
                " (solid: test split; dotted: longer test set)"
                if config.system == "three-body"
                else ""
            )
        )
        ax.set_ylabel(ylabel)
        ax.set_title(f"{config.system}: {ylabel} along the rollout")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        save_figure_atomic(fig, workdir / out)


def plot_trajectories(path: Path, config, predicted: dict, test: dict, labels: dict) -> None:
    """A few test systems in the x-y plane: the true trajectories (dashed) and each model's.

    Arguments:
        predicted: ``{model: positions [S, T, M, n]}`` for the first S test systems.
    """
    from matplotlib.figure import Figure

    true = np.asarray(test["x"][: len(next(iter(predicted.values())))])
    n_systems, num_steps = true.shape[0], true.shape[1] - 1
    fig = Figure(figsize=(4.2 * n_systems, 4.4))
    axes = np.atleast_1d(fig.subplots(1, n_systems))
    for k, (name, xs) in enumerate(predicted.items()):
        for i, ax in enumerate(axes):
            for body in range(xs.shape[2]):
                ax.plot(
                    xs[i, :, body, 0],
                    xs[i, :, body, 1],
                    color=f"C{k}",
                    lw=0.9,
                    alpha=0.8,
                    label=labels[name] if body == 0 else None,
                )
    for i, ax in enumerate(axes):
        for body in range(true.shape[2]):
            ax.plot(
                true[i, :, body, 0],
                true[i, :, body, 1],
                color="k",
                lw=1.6,
                ls="--",
                label="true" if body == 0 else None,
            )
            ax.scatter(*true[i, 0, body, :2], color="k", s=18, zorder=5)
        span = np.abs(true[i, ..., :2]).max() * 1.6
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_aspect("equal")
        ax.set_title(f"test system {i}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(
        f"{config.system}: true (dashed) and predicted trajectories, t <= "
        f"{config.dt * num_steps:.3g}"
    )
    save_figure_atomic(fig, path)
