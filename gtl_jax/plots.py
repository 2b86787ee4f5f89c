"""PNG plots of a run: fitness over generations, descendants' learning curves.

Each ``plot_*`` function writes a PNG; the matching ``*_figure`` function builds the same
``matplotlib.figure.Figure`` without saving it (for tests and notebooks). Figures are made
without ``pyplot``: nothing global is opened, nothing needs closing.

Conventions shared by the plots: accuracies are drawn in percent; generation and step axes
have integer ticks; accuracy axes are not zoomed into noise (learning curves run from
chance, or the lowest value, to 100%; other accuracy axes span at least
:data:`MIN_SPAN` percentage points); legends sit outside the axes.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

CURVE_COLUMNS = 3  # at most this many learning-curve panels per row
MIN_SPAN = 20.0  # percentage points: the least height of an accuracy axis
DPI = 120
# Step 0 and the instinct count as equal within this (fraction of accuracy).
INSTINCT_TOLERANCE = 5e-4
# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _save(fig: Figure, path: str | pathlib.Path) -> None:
    fig.savefig(path)


def _integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _span_limits(
    values, lo: float = 0.0, hi: float = 100.0, span: float = MIN_SPAN
) -> tuple[float, float]:
    """Limits holding the finite ``values``, at least ``span`` high, within [lo, hi]."""
    v = np.asarray([x for x in np.ravel(values) if np.isfinite(x)], float)
    if v.size == 0:
        return lo, hi
    bottom, top = float(v.min()), float(v.max())
    pad = 0.08 * max(top - bottom, span)
    bottom, top = bottom - pad, top + pad
    if top - bottom < span:
        centre = (top + bottom) / 2
        bottom, top = centre - span / 2, centre + span / 2
    if bottom < lo:
        bottom, top = lo, min(hi, top + lo - bottom)
    if top > hi:
        bottom, top = max(lo, bottom - (top - hi)), hi
    return bottom, top


def _legend_below(
    fig: Figure, handles, ncol: int | None = None, title: str | None = None
) -> None:
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=ncol or min(len(handles), 3),
            fontsize=8,
            title=title,
            title_fontsize=8,
            frameon=False,
        )


# --------------------------------------------------------------------------- fitness


def fitness_figure(metrics: Sequence[dict]) -> Figure:
    """Critic fitness per generation: the population's min-max range, its mean (with the
    95% CI of ``fitness_ci`` when the lines have it) and its best member."""
    g = np.array([m["generation"] for m in metrics])
    get = lambda k: 100 * np.array([m.get(k, np.nan) for m in metrics], float)  # noqa: E731
    fmax, fmean, fmin, ci = (
        get(k) for k in ("fitness_max", "fitness_mean", "fitness_min", "fitness_ci")
    )
    fig = Figure(figsize=(5.6, 3.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.fill_between(
        g, fmin, fmax, color="C0", alpha=0.13, lw=0, label="population min-max"
    )
    handles = [ax.collections[-1]]
    label = "population mean"
    if np.isfinite(ci).any():
        ax.fill_between(g, fmean - ci, fmean + ci, color="C0", alpha=0.3, lw=0)
        label += " ± 95% CI"
    handles += ax.plot(g, fmean, color="C0", marker="o", ms=4, label=label)
    handles += ax.plot(g, fmax, color="C1", marker="^", ms=4, lw=1, label="best member")
    for x in g[~np.isfinite(fmean)]:  # every member's fitness NaN or inf
        ax.annotate(
            "no finite\nfitness",
            (x, 0.03),
            xycoords=("data", "axes fraction"),
            ha="center",
            fontsize=7,
            color="C3",
        )
    ax.set_ylim(*_span_limits([fmin, fmax, fmean - ci, fmean + ci]))
    _integer_ticks(ax)
    if len(g) == 1:
        ax.set_xlim(g[0] - 1, g[0] + 1)
    ax.set_xlabel("generation")
    ax.set_ylabel("critic query accuracy (%)")
    ax.set_title("Learngene fitness (meta-validation critics)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(fig, handles)
    return fig


def plot_fitness(metrics: Sequence[dict], path: str | pathlib.Path) -> None:
    """Critic fitness (max, mean, min over the population) per generation; see
    :func:`fitness_figure`."""
    _save(fitness_figure(metrics), path)


# --------------------------------------------------------------------------- curves

_SPECIAL = ("steps", "chance")
_SUFFIXES = ("_ci", "_instinct")


def _chance(setting: str, data: Mapping) -> float | None:
    if data.get("chance") is not None:
        return float(data["chance"])
    way = re.search(r"(\d+)-way", setting)
    return 1.0 / int(way.group(1)) if way and int(way.group(1)) > 0 else None


def _mean_half(value) -> tuple[float, float]:
    if isinstance(value, Sequence | np.ndarray) and np.ndim(value) == 1:
        return float(value[0]), float(value[1]) if len(value) > 1 else float("nan")
    return float(value), float("nan")


def curves_figure(curves: Mapping[str, Mapping]) -> Figure:
    """Learning curves, one panel per setting; see :func:`plot_curves`."""
    settings = list(curves)
    methods = []  # one colour per method, the same in every panel
    for data in curves.values():
        methods += [
            k
            for k in data
            if k not in _SPECIAL and not k.endswith(_SUFFIXES) and k not in methods
        ]
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    n = max(len(settings), 1)
    rows = math.ceil(n / CURVE_COLUMNS)
    cols = math.ceil(n / rows)  # 4 panels: 2 x 2
    fig = Figure(
        figsize=(max(5.0, 4.0 * cols), 3.0 * rows + 0.9), dpi=DPI, layout="constrained"
    )
    grid = fig.subplots(rows, cols, squeeze=False, sharey=True)
    axes = list(grid.ravel())
    for ax in axes[len(settings) :]:  # the last row's unused panels
        ax.set_visible(False)
    lows, banded, instinct_differs, instinct_same = [], False, False, False
    chances = set()
    for ax, setting in zip(axes, settings):
        data = curves[setting]
        steps = np.asarray(data["steps"], float)
        span = steps[-1] - steps[0] if len(steps) > 1 else 1.0
        for method in (k for k in methods if k in data):
            mean = 100 * np.asarray(data[method], float)
            if mean.shape != steps.shape:
                raise ValueError(
                    f"{setting}: {method} has {mean.size} values for {steps.size} steps"
                )
            colour = colours[method]
            ax.plot(steps, mean, color=colour, marker="o", ms=4, label=method)
            lows.append(mean)
            if data.get(f"{method}_ci") is not None:
                half = 100 * np.asarray(data[f"{method}_ci"], float)
                finite = np.isfinite(half)
                if finite.all():
                    ax.fill_between(
                        steps, mean - half, mean + half, color=colour, alpha=0.18, lw=0
                    )
                elif finite.any():
                    ax.errorbar(
                        steps[finite],
                        mean[finite],
                        yerr=half[finite],
                        fmt="none",
                        ecolor=colour,
                        capsize=3,
                    )
                banded |= finite.any()
                lows.append(np.where(finite, mean - half, mean))
            if data.get(f"{method}_instinct") is not None:
                inst, half = (100 * v for v in _mean_half(data[f"{method}_instinct"]))
                if steps[0] == 0 and abs(inst - mean[0]) <= 100 * INSTINCT_TOLERANCE:
                    instinct_same = True  # step 0 is the instinct (prototype head)
                    continue
                instinct_differs = True
                ax.errorbar(
                    steps[0] - 0.04 * span,  # just left of step 0: before fine-tuning
                    inst,
                    yerr=None if math.isnan(half) else half,
                    fmt="D",
                    ms=5,
                    mfc="white",
                    mec=colour,
                    ecolor=colour,
                    capsize=2,
                    zorder=3,
                )
                lows.append([inst - (0 if math.isnan(half) else half)])
        chance = _chance(setting, data)
        if chance is not None:
            # Named in the legend, not on the panel, where a label overlapped curves
            # ending near chance.
            ax.axhline(100 * chance, color="0.45", ls=":", lw=1, zorder=1)
            chances.add(round(100 * chance, 6))
            lows.append([100 * chance])
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("fine-tuning step")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    # From chance (or the lowest value), rounded down to 10%, to 100%.
    every = np.concatenate([np.ravel(np.asarray(x, float)) for x in lows] or [[0.0]])
    low = float(every[np.isfinite(every)].min(initial=100.0))
    bottom = min(max(0.0, 10 * math.floor((low - 1) / 10)), 100 - MIN_SPAN)
    axes[0].set_ylim(bottom, 101)
    for ax in grid[:, 0]:
        ax.set_ylabel(
            "query accuracy (%, mean ± 95% CI)" if banded else "query accuracy (%)"
        )
    handles = [
        Line2D([], [], color=colours[m], marker="o", ms=4, label=m) for m in methods
    ]
    if chances:
        level = next(iter(chances)) if len(chances) == 1 else None
        label = f"chance {level:.3g}%" if level is not None else "chance (1 / ways)"
        handles.append(Line2D([], [], color="0.45", ls=":", lw=1, label=label))
    note = None
    if instinct_differs:
        note = (
            "\u25c7 instinct: nearest-prototype readout before fine-tuning "
            "(step 0 is the untrained head)"
        )
    elif instinct_same:
        note = "step 0 = instinct (nearest-prototype readout)"
    _legend_below(fig, handles, ncol=min(len(methods), 5), title=note)
    return fig


def plot_curves(curves: Mapping[str, Mapping], path: str | pathlib.Path) -> None:
    """Mean query accuracy vs fine-tuning step, one panel per setting, one line per method.

    Args:
      curves: ``{setting: {"steps": [...], method: [mean accuracy per step], ...}}``,
        accuracies as fractions. Optional keys of a setting:

        - ``"<method>_ci"``: 95% CI half-width per step, drawn as a band around the
          method's curve; NaN entries are steps without one (e.g. only the final step's
          CI known: ``[nan, ..., half]``), drawn as error bars where known.
        - ``"<method>_instinct"``: the method's instinct, the nearest-prototype readout
          of the descendants before fine-tuning, as a mean or ``(mean, half-width)``. If
          it differs from step 0 of the curve (a random or zero head starts near chance),
          it is drawn as a hollow diamond just left of step 0 and the legend says so; if
          it equals step 0 (a prototype head), the legend says step 0 is the instinct.
        - ``"chance"``: chance accuracy; else ``1/N`` from an ``"N-way"`` in the setting's
          name. Drawn as a dotted line; the accuracy axis runs from it to 100%.
    """
    _save(curves_figure(curves), path)


# --------------------------------------------------------------------------- share


def share_figure(rows: Sequence[dict]) -> Figure:
    """Accuracy against the share of parameters transferred; see :func:`plot_share`."""
    shots = sorted({r["shot"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    markers = {h: "osD^vP*X"[i % 8] for i, h in enumerate(heads)}
    xs = [100 * r["params_transferred"] for r in rows] or [0.0]
    # Points at the same share (methods transferring the same parameters, heads of one
    # method) side by side, in method then head order.
    dodge = 0.015 * max(max(xs) - min(xs), 10.0)
    n = max(len(shots), 1)
    fig = Figure(figsize=(max(5.6, 3.6 * n + 2.0), 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    values = []
    for ax, shot in zip(axes, shots):
        here = sorted(
            (r for r in rows if r["shot"] == shot),
            key=lambda r: (methods.index(r["method"]), heads.index(r["head"])),
        )
        groups = {}
        for r in here:
            groups.setdefault(round(100 * r["params_transferred"], 3), []).append(r)
        for r in here:
            mean, half = (100 * v for v in r["accuracy"])
            group = groups[round(100 * r["params_transferred"], 3)]
            place = next(i for i, x in enumerate(group) if x is r)
            offset = (place - (len(group) - 1) / 2) * dodge
            ax.errorbar(
                100 * r["params_transferred"] + offset,
                mean,
                yerr=half,
                fmt=markers[r["head"]],
                color=colours[r["method"]],
                ms=5,
                capsize=3,
            )
            values += [mean - half, mean + half]
        way = next(r["way"] for r in rows if r["shot"] == shot)
        ax.set_title(f"{way}-way {shot}-shot", fontsize=10)
        ax.set_xlabel("parameters transferred (%)")
        ax.grid(alpha=0.3)
    bottom, top = _span_limits(values)
    axes[0].set_ylim(bottom, top)
    for ax, shot in zip(axes, shots):
        way = next(r["way"] for r in rows if r["shot"] == shot)
        if bottom <= 100 / way <= top:
            ax.axhline(100 / way, color="0.45", ls=":", lw=1, zorder=1)
    axes[0].set_ylabel("query accuracy after fine-tuning\n(%, mean ± 95% CI)")
    handles = [
        Line2D([], [], ls="none", marker="o", color=colours[m], label=m)
        for m in methods
    ]
    if len(heads) > 1:
        handles += [
            Line2D(
                [],
                [],
                ls="none",
                marker=markers[h],
                color="0.3",
                label=h if " " in h else f"{h} head",
            )
            for h in heads
        ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def plot_share(rows: Sequence[dict], path: str | pathlib.Path) -> None:
    """Accuracy (mean, 95% CI) against the share of parameters transferred, per method
    (colour) and head (marker), one panel per shot setting.

    Args:
      rows: result rows of ``python -m gtl_jax.inherit`` (way, method, head, shot,
        accuracy as ``(mean, half-width)``, params_transferred).
    """
    _save(share_figure(rows), path)


# --------------------------------------------------------------------------- study


def _t95(n: int) -> float:
    """The 95% two-sided Student's t quantile for a mean of ``n`` values."""
    if n < 2:
        return float("nan")
    return _T95[n - 2] if n - 2 < len(_T95) else 1.96


def study_fitness_figure(histories: Mapping[str, Sequence[Sequence[dict]]]) -> Figure:
    """Population mean fitness per generation per arm; see :func:`plot_study_fitness`."""
    fig = Figure(figsize=(6.0, 4.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    handles, values, seeds = [], [], set()
    for i, (arm, runs) in enumerate(histories.items()):
        runs = [r for r in runs if r]
        if not runs:
            continue
        seeds.add(len(runs))
        length = min(len(r) for r in runs)
        g = np.array([m["generation"] for m in runs[0][:length]])
        mean = 100 * np.array([[m["fitness_mean"] for m in r[:length]] for r in runs])
        best = 100 * np.array([[m["fitness_max"] for m in r[:length]] for r in runs])
        centre = mean.mean(0)
        colour = f"C{i % 10}"
        label = arm.replace("_", "-")
        handles += ax.plot(
            g, centre, color=colour, marker="o", ms=4, label=f"{label}: population mean"
        )
        if len(runs) > 1:
            half = _t95(len(runs)) * mean.std(0, ddof=1) / np.sqrt(len(runs))
            ax.fill_between(
                g, centre - half, centre + half, color=colour, alpha=0.2, lw=0
            )
            values += [centre - half, centre + half]
        handles += ax.plot(
            g, best.mean(0), color=colour, ls="--", lw=1, label=f"{label}: best member"
        )
        values += [centre, best.mean(0)]
    if values:
        ax.set_ylim(*_span_limits(np.concatenate(values)))
    _integer_ticks(ax)
    ax.set_xlabel("generation")
    ax.set_ylabel("critic query accuracy (%)")
    count = "/".join(str(s) for s in sorted(seeds))
    if not seeds:
        count = "no runs"
    elif max(seeds) == 1:
        count = "1 seed"
    else:
        count += " seeds; band: 95% CI over seeds"
    ax.set_title(f"Fitness on fixed meta-validation critics ({count})", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_below(fig, handles, ncol=2)
    return fig


def plot_study_fitness(
    histories: dict[str, Sequence[Sequence[dict]]], path: str | pathlib.Path
) -> None:
    """Population mean fitness per generation, mean and 95% band over seeds, per arm.

    ``histories``: ``{arm: [metrics of each seed's evolution]}`` (``metrics.jsonl`` lines).
    The band is the 95% confidence interval of the mean over seeds (Student's t, as in the
    study's tables); the dashed line is the mean over seeds of the best member's fitness.
    """
    _save(study_fitness_figure(histories), path)


def life_gene_names(history: Sequence[dict]) -> list[str]:
    """The life genes a run's metrics hold (``life_genes/<name>`` per member)."""
    names = {
        k.split("/", 1)[1] for m in history for k in m if k.startswith("life_genes/")
    }
    return sorted(names)


def life_genes_figure(histories: Mapping[str, Sequence[Sequence[dict]]]) -> Figure:
    """Each life gene's trajectory; see :func:`plot_life_genes`."""
    names = sorted(
        {n for runs in histories.values() for r in runs for n in life_gene_names(r)}
    )
    fig = Figure(figsize=(4.2 * max(len(names), 1), 3.8), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(names), 1)))
    handles = []
    for ax, name in zip(axes, names):
        for i, (arm, runs) in enumerate(histories.items()):
            runs = [r for r in runs if r and name in life_gene_names(r)]
            if not runs:
                continue
            colour = f"C{i % 10}"
            label = arm.replace("_", "-")
            for j, r in enumerate(runs):
                g = np.array([m["generation"] for m in r])
                values = np.array([m[f"life_genes/{name}"] for m in r], float)
                lines = ax.plot(
                    g,
                    np.exp(np.log(values).mean(1)),
                    color=colour,
                    marker="o",
                    ms=3,
                    lw=1,
                    label=f"{label}: population (geometric) mean",
                )
                ax.fill_between(
                    g, values.min(1), values.max(1), color=colour, alpha=0.1, lw=0
                )
                if j == 0 and ax is axes[0]:
                    handles += lines
        ax.set_yscale("log")
        _integer_ticks(ax)
        ax.set_xlabel("generation")
        ax.set_title(f"life gene: {name} (band: population min-max)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    if handles:
        _legend_below(fig, handles, ncol=2)
    return fig


def plot_life_genes(
    histories: Mapping[str, Sequence[Sequence[dict]]], path: str | pathlib.Path
) -> None:
    """The heritable lifetime hyperparameters over generations: per gene, each run's
    population geometric mean (log scale) and min-max band, coloured by arm.

    ``histories``: ``{arm: [metrics of each run]}``, as :func:`plot_study_fitness`; a
    single evolution is ``{"evolution": [its metrics]}``. Writes nothing when no run has
    life genes.
    """
    if any(life_gene_names(r) for runs in histories.values() for r in runs):
        _save(life_genes_figure(histories), path)


# --------------------------------------------------------------------------- attention


def attention_figure(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    shares: Mapping[str, tuple[float, float]] | None = None,
) -> Figure:
    """Attention maps over their images; see :func:`plot_attention`."""
    images = np.asarray(images)
    n, side = images.shape[0], images.shape[1]
    rows = ["image", *maps]
    fig = Figure(
        figsize=(1.15 * n + 1.6, 1.2 * len(rows) + 0.4), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(len(rows), n, squeeze=False)
    gray = images.mean(axis=-1)
    for r, row in enumerate(rows):
        label = row
        if shares and row in shares:
            inside, area = shares[row]
            label = (
                f"{row}\n{100 * inside:.0f}% on foreground\n(area {100 * area:.0f}%)"
            )
        for i in range(n):
            ax = axes[r, i]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(gray[i], cmap="gray", vmin=0, vmax=255)
            if row != "image":
                m = np.asarray(maps[row][i], float)
                ax.imshow(
                    m / max(m.max(), 1e-12),
                    cmap="inferno",
                    alpha=0.6,
                    vmin=0,
                    vmax=1,
                    extent=(-0.5, side - 0.5, side - 0.5, -0.5),
                    interpolation="nearest",
                )
        axes[r, 0].set_ylabel(label, fontsize=7)
    return fig


def plot_attention(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | pathlib.Path,
    shares: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Where ViT descendants look: one row of images, then one row of attention maps per
    method (each map scaled to its own maximum, drawn over the image).

    Args:
      images: u8[n, S, S, Ch], query images of unseen classes.
      maps: ``{method: f32[n, g, g]}``, the class token's attention rollout over the g x g
        patches (``gtl_jax.attention.maps``).
      shares: ``{method: (share on foreground, foreground area)}`` to print beside the rows
        (``gtl_jax.attention.foreground_share``, averaged).
    """
    _save(attention_figure(images, maps, shares), path)
