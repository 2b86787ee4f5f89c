"""gtl_jax.plots: every plot function writes a PNG from small synthetic inputs shaped as its
callers build them; the figures have integer generation/step ticks, accuracy axes that are
not zoomed into noise, legends outside the axes, confidence bands and the instinct note."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from PIL import Image

from gtl_jax import plots


def metrics(generations: int = 6, seed: int = 0) -> list[dict]:
    """metrics.jsonl lines of a run (the fields the plots read, and a list field)."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(1, generations + 1):
        mean = 0.55 + 0.004 * g + 0.005 * rng.standard_normal()
        out.append(
            {
                "generation": g,
                "fitness_max": mean + 0.02,
                "fitness_mean": mean,
                "fitness_min": mean - 0.02,
                "fitness_ci": 0.004,
                "fitness": [mean - 0.02, mean, mean + 0.02],
                "diverged": 0,
            }
        )
    return out


def curve_rows() -> list[dict]:
    """Result rows as gtl_jax.inherit writes them (random head: step 0 near chance)."""
    rows = []
    for shot in (1, 5):
        for method, share, inst in (
            ("learngene", 0.2, 0.6),
            ("scratch", 0.0, 0.42),
            ("pretrain-circuit", 0.2, 0.5),
        ):
            for head in ("random", "prototype"):
                step0 = 0.21 if head == "random" else inst
                rows.append(
                    {
                        "way": 5,
                        "shot": shot,
                        "method": method,
                        "head": head,
                        "accuracy": [0.55 + 0.01 * shot, 0.024],
                        "instinct": [inst, 0.02],
                        "curve_steps": [0, 10, 20],
                        "curve": [step0, 0.5, 0.55 + 0.01 * shot],
                        "params_transferred": share,
                    }
                )
    return rows


def curves_as_callers_build_them(rows):
    """As gtl_jax.inherit.write_plots (and gtl_jax.evolve.run) build the curves."""
    curves = {}
    for r in rows:
        setting = f"{r['way']}-way {r['shot']}-shot, {r['head']} head"
        curves.setdefault(setting, {"steps": r["curve_steps"]})[r["method"]] = r[
            "curve"
        ]
    return curves


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
    assert width >= 500 and height >= 350


def assert_integer_ticks(ax):
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def legend_texts(fig):
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()], legend.get_title().get_text()


def test_plot_fitness(tmp_path):
    history = metrics()
    plots.plot_fitness(history, tmp_path / "fitness.png")
    assert_png(tmp_path / "fitness.png")

    fig = plots.fitness_figure(history)
    (ax,) = fig.axes
    assert_integer_ticks(ax)
    bottom, top = ax.get_ylim()
    # The values span ~5 points: the axis still spans 20, within 0-100%.
    assert top - bottom >= plots.MIN_SPAN - 1e-9 and 0 <= bottom and top <= 100
    assert bottom <= 100 * min(m["fitness_min"] for m in history)
    assert top >= 100 * max(m["fitness_max"] for m in history)
    assert ax.get_legend() is None  # the legend is the figure's, below the axes
    labels, _ = legend_texts(fig)
    assert "population mean ± 95% CI" in labels and "best member" in labels


def test_plot_fitness_without_ci_one_generation_and_nan(tmp_path):
    history = [{k: v for k, v in m.items() if k != "fitness_ci"} for m in metrics(1)]
    fig = plots.fitness_figure(history)
    assert "population mean" in legend_texts(fig)[0]
    assert_integer_ticks(fig.axes[0])
    # A generation whose members all diverged: NaN fitness, a gap in the lines.
    history = metrics(3)
    for k in ("fitness_max", "fitness_mean", "fitness_min", "fitness_ci"):
        history[1][k] = float("nan")
    plots.plot_fitness(history, tmp_path / "fitness.png")
    assert_png(tmp_path / "fitness.png")


def test_plot_curves_as_the_callers_call_it(tmp_path):
    curves = curves_as_callers_build_them(curve_rows())
    plots.plot_curves(curves, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")

    fig = plots.curves_figure(curves)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == list(curves)  # 4 panels, 2 x 2
    for ax in axes:
        assert_integer_ticks(ax)
        bottom, top = ax.get_ylim()
        assert bottom <= 20 and top >= 100  # from 5-way chance (20%) to 100%
        assert any(  # the chance line
            line.get_linestyle() == ":" and line.get_ydata()[0] == pytest.approx(20)
            for line in ax.get_lines()
        )
        assert ax.get_legend() is None
        assert not ax.texts  # "chance" is named in the legend, not over the curves
    labels, title = legend_texts(fig)
    assert labels == ["learngene", "scratch", "pretrain-circuit", "chance 20%"]
    assert title == ""  # no instinct given: no note
    # One colour per method, the same in every panel.
    colours = [
        {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in axes
    ]
    assert all(c["learngene"] == colours[0]["learngene"] for c in colours)


def test_plot_curves_bands_and_final_error_bars(tmp_path):
    curves = {
        "5-way 1-shot": {
            "steps": [0, 5, 10],
            "learngene": [0.3, 0.5, 0.6],
            "learngene_ci": [0.02, 0.03, 0.03],
            "scratch": [0.2, 0.4, 0.5],
            "scratch_ci": [math.nan, math.nan, 0.04],  # only the final step's CI
        }
    }
    fig = plots.curves_figure(curves)
    (ax,) = fig.axes
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # learngene's band; scratch has an error bar at step 10
    ys = np.concatenate([p.vertices[:, 1] for p in bands[0].get_paths()])
    assert ys.min() == pytest.approx(28) and ys.max() == pytest.approx(63)
    assert "95% CI" in ax.get_ylabel()
    plots.plot_curves(curves, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def test_plot_curves_says_when_step_0_is_not_the_instinct(tmp_path):
    rows = [r for r in curve_rows() if r["shot"] == 1]
    curves = curves_as_callers_build_them(rows)
    for r in rows:
        setting = f"{r['way']}-way {r['shot']}-shot, {r['head']} head"
        curves[setting][f"{r['method']}_instinct"] = r["instinct"]
    random_only = {k: v for k, v in curves.items() if "random" in k}
    fig = plots.curves_figure(random_only)
    _, title = legend_texts(fig)
    assert "instinct" in title and "step 0 is the untrained head" in title
    (ax,) = fig.axes
    diamonds = [line for line in ax.get_lines() if line.get_marker() == "D"]
    assert len(diamonds) == 3  # one instinct per method, left of step 0
    assert all(line.get_xdata()[0] < 0 for line in diamonds)
    assert sorted(line.get_ydata()[0] for line in diamonds) == pytest.approx(
        [42, 50, 60]
    )
    plots.plot_curves(random_only, tmp_path / "random.png")
    assert_png(tmp_path / "random.png")

    # A prototype head starts at the instinct: no diamonds, the legend says so.
    prototype_only = {k: v for k, v in curves.items() if "prototype" in k}
    fig = plots.curves_figure(prototype_only)
    assert legend_texts(fig)[1] == "step 0 = instinct (nearest-prototype readout)"
    assert not [line for line in fig.axes[0].get_lines() if line.get_marker() == "D"]
    # A bare mean is accepted as the instinct too.
    curves = {"s": {"steps": [0, 1], "m": [0.2, 0.5], "m_instinct": 0.6}}
    assert "untrained head" in legend_texts(plots.curves_figure(curves))[1]


def test_plot_curves_chance_and_range(tmp_path):
    curves = {"setting": {"steps": [0, 1, 2], "m": [0.91, 0.92, 0.93]}}
    (ax,) = plots.curves_figure(curves).axes
    bottom, top = ax.get_ylim()
    assert top - bottom >= plots.MIN_SPAN and bottom <= 91  # no chance known
    curves["setting"]["chance"] = 0.5
    (ax,) = plots.curves_figure(curves).axes
    assert ax.get_ylim()[0] <= 50
    (ax,) = plots.curves_figure({"20-way 5-shot": curves["setting"]}).axes
    assert ax.get_ylim()[0] <= 50  # the explicit chance wins over the name's 1/20
    with pytest.raises(ValueError, match="2 values for 3 steps"):
        plots.curves_figure({"s": {"steps": [0, 1, 2], "m": [0.1, 0.2]}})


def test_plot_share(tmp_path):
    rows = curve_rows()
    rows.append(
        {
            "way": 5,
            "shot": 1,
            "method": "proto-frozen",
            "head": "frozen features",
            "accuracy": [0.5, 0.02],
            "params_transferred": 1.0,
        }
    )
    plots.plot_share(rows, tmp_path / "share.png")
    assert_png(tmp_path / "share.png")

    fig = plots.share_figure(rows)
    assert [ax.get_title() for ax in fig.axes] == ["5-way 1-shot", "5-way 5-shot"]
    bottom, top = fig.axes[0].get_ylim()
    assert top - bottom >= plots.MIN_SPAN - 1e-9  # CIs of ~2 points, not zoomed in
    labels, _ = legend_texts(fig)
    assert labels[:4] == ["learngene", "scratch", "pretrain-circuit", "proto-frozen"]
    assert "random head" in labels and "frozen features" in labels
    # learngene and pretrain-circuit transfer the same share, with two heads each: four
    # points side by side rather than on top of each other.
    xs = [
        line.get_xdata()[0]
        for line in fig.axes[0].get_lines()
        if line.get_marker() != "_" and abs(line.get_xdata()[0] - 20) < 5
    ]  # the points, not the error bars' caps
    assert len(xs) == 4 and len(set(np.round(xs, 6))) == 4


def test_plot_study_fitness(tmp_path):
    histories = {
        "evolved": [metrics(5, seed) for seed in range(3)],
        "no_selection": [metrics(5, 10 + seed) for seed in range(3)],
        "empty": [[]],
    }
    plots.plot_study_fitness(histories, tmp_path / "fitness.png")
    assert_png(tmp_path / "fitness.png")

    fig = plots.study_fitness_figure(histories)
    (ax,) = fig.axes
    assert_integer_ticks(ax)
    assert "3 seeds" in ax.get_title()
    bottom, top = ax.get_ylim()
    assert top - bottom >= plots.MIN_SPAN - 1e-9
    labels, _ = legend_texts(fig)
    assert labels == [
        "evolved: population mean",
        "evolved: best member",
        "no-selection: population mean",
        "no-selection: best member",
    ]
    # The band is the Student's t 95% CI over the 3 seeds (t = 4.303 for 2 d.o.f.).
    band = [c for c in ax.collections if isinstance(c, PolyCollection)][0]
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    first = 100 * np.array([h[0]["fitness_mean"] for h in histories["evolved"]])
    half = 4.303 * first.std(ddof=1) / math.sqrt(3)
    assert ys.max() >= first.mean() + half - 1e-6
    # A single seed (no band) and no run at all still make a figure.
    plots.plot_study_fitness({"evolved": [metrics(3)]}, tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    plots.plot_study_fitness({}, tmp_path / "none.png")
    assert_png(tmp_path / "none.png")


def test_life_genes_are_plotted_only_when_a_run_has_them(tmp_path):
    from gtl_jax.plots import plot_life_genes

    plain = [{"generation": 1, "fitness": [0.5]}]
    plot_life_genes({"evolved": [plain]}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    genes = [{"generation": g, "life_genes/lr": [0.05, 0.1]} for g in (1, 2)]
    plot_life_genes({"evolved": [genes], "no_selection": [plain]}, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0
