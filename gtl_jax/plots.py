"""PNG plots of a run: fitness over generations, descendants' learning curves."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
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


def plot_share(rows: Sequence[dict], path: str | pathlib.Path) -> None:
    """Accuracy (mean, 95% CI) against the share of parameters transferred, per method.

    Args:
      rows: result rows of ``python -m gtl_jax.inherit`` (method, head, shot, accuracy,
        params_transferred).
    """
    shots = sorted({r["shot"] for r in rows})
    fig, axes = plt.subplots(
        1, len(shots), figsize=(4.6 * len(shots), 3.6), dpi=120, squeeze=False
    )
    heads = sorted({r["head"] for r in rows})
    markers = dict(zip(heads, "os^Dv"))
    for ax, shot in zip(axes[0], shots):
        for r in (r for r in rows if r["shot"] == shot):
            mean, half = (100 * v for v in r["accuracy"])
            x = 100 * r["params_transferred"]
            ax.errorbar(x, mean, yerr=half, fmt=markers[r["head"]], capsize=3)
            ax.annotate(
                f"{r['method']} ({r['head'].split()[0]})",
                (x, mean),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_title(f"{rows[0]['way']}-way {shot}-shot")
        ax.set_xlabel("parameters transferred (%)")
        ax.set_ylabel("query accuracy after fine-tuning (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_study_fitness(
    histories: dict[str, Sequence[Sequence[dict]]], path: str | pathlib.Path
) -> None:
    """Population mean fitness per generation, mean and 95% band over seeds, per arm.

    ``histories``: ``{arm: [metrics of each seed's evolution]}`` (``metrics.jsonl`` lines).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for arm, runs in histories.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        length = min(len(r) for r in runs)
        g = np.array([m["generation"] for m in runs[0][:length]])
        mean = np.array([[m["fitness_mean"] for m in r[:length]] for r in runs])
        best = np.array([[m["fitness_max"] for m in r[:length]] for r in runs])
        centre = mean.mean(0)
        half = (
            1.96 * mean.std(0, ddof=1) / np.sqrt(len(runs))
            if len(runs) > 1
            else np.zeros_like(centre)
        )
        label = arm.replace("_", "-")
        (line,) = ax.plot(g, centre, marker="o", label=f"{label}: population mean")
        ax.fill_between(
            g, centre - half, centre + half, alpha=0.2, color=line.get_color()
        )
        ax.plot(
            g, best.mean(0), ls="--", color=line.get_color(), label=f"{label}: best"
        )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("critic query accuracy")
    ax.set_title(f"Fitness on fixed meta-validation critics ({len(runs)} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
