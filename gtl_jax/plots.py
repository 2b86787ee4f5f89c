"""PNG plots of a run: fitness over generations, descendants' learning curves."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_fitness(metrics: Sequence[dict], path: str | pathlib.Path) -> None:
    """Critic fitness (max, mean, min over the population) per generation."""
    g = [m["generation"] for m in metrics]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.fill_between(
        g,
        [m["fitness_min"] for m in metrics],
        [m["fitness_max"] for m in metrics],
        alpha=0.25,
        label="min-max",
    )
    ax.plot(g, [m["fitness_mean"] for m in metrics], marker="o", label="mean")
    ax.plot(g, [m["fitness_max"] for m in metrics], marker=".", label="max")
    ax.set_xlabel("generation")
    ax.set_ylabel("critic query accuracy")
    ax.set_title("Learngene fitness (meta-validation critics)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(curves: dict[str, dict], path: str | pathlib.Path) -> None:
    """Mean query accuracy vs fine-tuning step, one panel per setting, one line per method.

    Args:
      curves: ``{setting: {"steps": [...], method: [mean acc per step], ...}}``.
    """
    settings = list(curves)
    fig, axes = plt.subplots(
        1, len(settings), figsize=(4.2 * len(settings), 3.2), dpi=120, squeeze=False
    )
    for ax, setting in zip(axes[0], settings):
        steps = curves[setting]["steps"]
        for method, values in curves[setting].items():
            if method != "steps":
                ax.plot(steps, 100 * np.asarray(values), marker="o", label=method)
        ax.set_title(setting)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("query accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
