"""``python -m gtl_jax.inherit``: what a learngene buys, against what, at what cost.

Loads a learngene file, builds one descendant per fixed, seeded test episode and fine-tunes it,
side by side with the baselines on the same episodes and the same descendant keys:

- ``learngene``: the learngene file inherited (cross weights zeroed if ``zero_cross``).
- ``scratch``: random initialisation.
- ``pretrain-full``: every conv layer of a network of the descendant's architecture pretrained
  conventionally on all meta-train classes (``gtl_jax.pretrain``).
- ``pretrain-circuit``: the learngene's channel circuit (same layers, same k) cut from that
  pretrained network: what evolution adds over plain pre-training at the same share.
- ``heur-lg``: the last ``heur_layers`` conv layers of the pretrained network, whole, on random
  lower layers (Heur-LG, AAAI 2022).
- ``proto-frozen``: no fine-tuning: nearest support prototype on the pretrained network's frozen
  features (for comparison with ProtoNet-style tables).

Each fine-tuned method runs once per descendant head in ``heads`` (random, zero, prototype).
The descendant may have another shape than the learngene's ancestor (``--model``, ``--width``:
wider, or a deeper VGG) and another dataset (``--dataset``). The pretrained network is cached
in the workdir.

Workdir contents: ``config.json``, ``pretrained/``, ``results.md``, ``results.jsonl``,
``results.json``, ``curves.png``, ``fitness.png``, ``share.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gtl_jax import checkpoint, distributed, plots, stopping
from gtl_jax.configs import load_config
from gtl_jax.data import augment_fn, load_dataset
from gtl_jax.descendants import HEADS, mean_confidence
from gtl_jax.evolve import (
    COMMAND_ERRORS,
    FITNESS_KEYS,
    PROGRESS_FORMAT,
    ConfigError,
    add_curve,
    build_parser,
    configure_jax,
    descendant_recipe,
    fixed_episodes,
    from_config,
    model_of,
    parse_shots,
    require_splits,
    resolve_config,
    smoke_note,
    validate_config,
)
from gtl_jax.executors import DescendantEvaluator
from gtl_jax.learngene import (
    GeneLayer,
    Learngene,
    LearngeneSpec,
    check_fits,
    extract_learngene,
    learngene_size,
    make_spec,
)
from gtl_jax.pretrain import PretrainConfig, pretrain

METHODS = (
    "learngene",
    "scratch",
    "pretrain-full",
    "pretrain-circuit",
    "heur-lg",
    "proto-frozen",
)
PRETRAINED_METHODS = frozenset(METHODS[2:])


def parse_list(c: ml_collections.ConfigDict, field: str, known: tuple[str, ...]):
    values = tuple(v.strip() for v in str(c[field]).split(",") if v.strip())
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise ConfigError(
            f"config field {field}={c[field]!r}: unknown {unknown or 'empty'}; "
            f"known: {', '.join(known)}"
        )
    return values


def validate_inherit(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first impossible field of the evidence suite."""
    parse_list(c, "methods", METHODS)
    parse_list(c, "heads", HEADS)
    if int(c.workers) < 0:
        raise ConfigError(f"config field workers={c.workers!r}: must be >= 0")
    for field in ("inherit_episodes", "heur_layers", "pretrain_batch"):
        if int(c[field]) < 1:
            raise ConfigError(f"config field {field}={c[field]!r}: must be >= 1")
    if int(c.pretrain_steps) < 0:
        raise ConfigError(f"config field pretrain_steps={c.pretrain_steps!r}: >= 0")
    if c.eval_split not in ("test", "val"):
        raise ConfigError(
            f"config field eval_split={c.eval_split!r}: must be test or val (the "
            "meta-train classes are the learngene's and the pretrained network's)"
        )


# --------------------------------------------------------------------------- transfers


def heur_spec(model, in_channels: int, layers: int) -> LearngeneSpec:
    """The last ``layers`` conv layers of ``model``, whole (Heur-LG)."""
    graph = model.conv_graph()
    channels = {node.name: node.channels for node in graph}
    chosen = graph[-layers:]
    return LearngeneSpec(
        tuple(
            GeneLayer(
                node.name,
                in_channels if node.input is None else channels[node.input],
                node.channels,
                node.stage,
            )
            for node in chosen
        ),
        ratio=1.0,
        in_channels=in_channels,
    )


def transfer_share(transfer: Learngene | None, total_params: int) -> float:
    return 0.0 if transfer is None else learngene_size(transfer) / total_params


def pretrained_cache(
    c: ml_collections.ConfigDict,
    train_images: jax.Array,
    workdir: pathlib.Path,
    closed_spec: LearngeneSpec | None = None,
) -> tuple[pathlib.Path, dict]:
    """Where ``pretrained_network`` caches its network, and the key the path is a digest of.

    The key holds everything the pretrained weights depend on: the network (``model``,
    ``width``, ``precision``, classes), the images themselves (a digest of ``train_images``:
    the dataset, its folder or file, its split and ``image_size``), ``seed``, ``augment``,
    every ``PretrainConfig`` field, the closed circuit, and JAX's random-bit generator (the
    command line's non-partitionable threefry, ``configure_jax``, or JAX's default). Nothing
    else: e.g. ``ratio`` counts only through the closed circuit, ``zero_cross`` not at all.
    """
    key = {
        "model": c.model,
        "width": c.width,
        "precision": c.precision,
        "dataset": c.dataset,
        "images": images_digest(train_images),
        "image_shape": list(train_images.shape[2:]),
        "classes": int(train_images.shape[0]),
        "seed": c.seed,
        "augment": c.augment,
        **dataclasses.asdict(from_config(PretrainConfig, c)),
        "closed": None if closed_spec is None else closed_spec.to_json(),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return workdir / "pretrained" / f"{c.model}-x{c.width:g}-{c.dataset}-{digest}", key


def pretrained_network(
    c: ml_collections.ConfigDict,
    train_images: jax.Array,
    workdir: pathlib.Path,
    *,
    quiet: bool,
    closed_spec: LearngeneSpec | None = None,
) -> tuple[Any, dict]:
    """The pretrained source network of the baselines, trained once and cached in the workdir
    (``pretrained_cache``: a change of anything its weights depend on trains another).

    ``closed_spec``: pre-train with that circuit kept closed (``gtl_jax.pretrain.pretrain``).
    """
    pc = from_config(PretrainConfig, c)
    model = model_of(c, train_images.shape[0])
    path, key = pretrained_cache(c, train_images, workdir, closed_spec)
    image_shape = tuple(train_images.shape[2:])
    template = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros((1, *image_shape)), train=False),
        jax.random.key(0),
    )
    cached = checkpoint.load_network(path, template)
    if cached is not None:
        if not quiet:
            print(f"pretrained network from {path}", file=sys.stderr)
        return cached
    start = time.perf_counter()
    with tqdm(
        total=pc.pretrain_steps, desc="pre-training", unit="step", disable=quiet
    ) as bar:

        def on_step(step, loss):
            bar.update()
            if step % 100 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")

        state, losses = pretrain(
            model,
            jax.random.fold_in(jax.random.key(c.seed), 7),
            train_images,
            pc,
            on_step=on_step,
            augment_fn=augment_fn(c.augment, train_images.shape[2]),
            closed_spec=closed_spec,
        )
    losses = np.asarray(losses)
    meta = {
        **key,
        "steps": pc.pretrain_steps,
        "images_seen": pc.pretrain_steps * pc.pretrain_batch,
        "seconds": time.perf_counter() - start,
        "final_loss": float(losses[-100:].mean()) if losses.size else None,
    }
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    checkpoint.save_network(path, variables, meta)
    return variables, meta


def images_digest(images: jax.Array | np.ndarray) -> str:
    """A hash of an image pool's shape and pixels (the pretrained network's cache key)."""
    array = np.ascontiguousarray(np.asarray(images))
    h = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- evaluation


def episode_fingerprint(episodes) -> str:
    """A hash of the episodes' images and labels: equal across methods and runs."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(episodes):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


class Suite:
    """Everything the evaluation jobs need, built once per process.

    Loads the learngene file and the data, checks that the learngene fits the descendant,
    builds (or reads from the workdir's cache) the pretrained network and each method's
    transfer, and the compiled descendant evaluators, one per head.
    """

    def __init__(
        self,
        c: ml_collections.ConfigDict,
        learngene_path: pathlib.Path,
        workdir: pathlib.Path,
        *,
        quiet: bool = True,
    ):
        validate_config(c)
        validate_inherit(c)
        self.c = c
        self.methods = parse_list(c, "methods", METHODS)
        self.heads = parse_list(c, "heads", HEADS)
        self.tuned = [m for m in self.methods if m != "proto-frozen"]
        learngene, self.meta = checkpoint.load_learngene(learngene_path)
        spec = LearngeneSpec.from_json(self.meta["spec"])
        pools = load_dataset(c.dataset, c.data_dir or None, image_size=c.image_size)
        require_splits(pools, (c.eval_split,), c, "evaluation (eval_split)")
        pretrained = sorted(PRETRAINED_METHODS & set(self.methods))
        if pretrained:
            require_splits(
                pools, ("train",), c, f"pre-training of {', '.join(pretrained)}"
            )
        validate_config(c, pools)
        eval_pool = pools[c.eval_split]
        image_shape = eval_pool.image_shape
        target = model_of(c, c.eval_way)
        try:
            check_fits(spec, target, image_shape[-1])
        except ValueError as e:
            raise checkpoint.LearngeneFileError(
                f"learngene file {learngene_path} (from {self.meta['model']}) cannot be "
                f"inherited by {c.model} x{c.width:g} on {c.dataset}: {e}"
            ) from None
        if c.heur_layers > len(target.conv_graph()):
            raise ConfigError(
                f"config field heur_layers={c.heur_layers}: {c.model} has only "
                f"{len(target.conv_graph())} conv layers"
            )
        workdir.mkdir(parents=True, exist_ok=True)

        # What each method transfers: a learngene-shaped dict of blocks, or None.
        self.transfers: dict[str, Learngene | None] = {
            "learngene": learngene,
            "scratch": None,
        }
        self.costs = {
            "learngene": {**self.meta.get("cost", {}), "what": "evolution"},
            "scratch": {"what": "none"},
        }
        if pretrained:
            variables, pre_meta = pretrained_network(
                c, jnp.asarray(pools["train"].images), workdir, quiet=quiet
            )
            params, stats = variables["params"], variables["batch_stats"]
            in_ch = image_shape[-1]
            full = extract_learngene(make_spec(target, 1.0, in_ch), params, stats)
            self.transfers |= {
                "pretrain-full": full,
                "proto-frozen": full,
                "pretrain-circuit": extract_learngene(spec, params, stats),
                "heur-lg": extract_learngene(
                    heur_spec(target, in_ch, c.heur_layers), params, stats
                ),
            }
            pre_cost = {
                "what": "pre-training",
                "steps": pre_meta["steps"],
                "images_seen": pre_meta["images_seen"],
                "seconds": pre_meta["seconds"],
            }
            self.costs |= {m: pre_cost for m in PRETRAINED_METHODS}
        shapes = jax.eval_shape(
            lambda k: target.init(k, jnp.zeros((1, *image_shape)), train=False),
            jax.random.key(0),
        )
        total = sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
        self.shares = {
            m: transfer_share(self.transfers[m], total) for m in self.methods
        }
        base = descendant_recipe(c)
        self.steps = base.steps
        self.evaluators = {
            head: DescendantEvaluator(
                target,
                dataclasses.replace(base, head=head),
                n_way=c.eval_way,
                strategy=c.strategy,
                zero_cross=c.zero_cross,
            )
            for head in self.heads
        }
        self.images = jnp.asarray(eval_pool.images)
        self._episodes = {}

    def episodes(self, shot: int):
        """The fixed episodes and descendant keys of a shot setting (seeded)."""
        if shot not in self._episodes:
            c = self.c
            key = jax.random.fold_in(jax.random.key(c.eval_seed), shot)
            self._episodes[shot] = fixed_episodes(
                key,
                self.images,
                episodes=c.inherit_episodes,
                n_way=c.eval_way,
                k_shot=shot,
                n_query=c.eval_query,
            )
        return self._episodes[shot]

    def job(self, shot: int, method: str, on_step=None) -> dict:
        """Descendants of one method at one shot setting, once per head.

        Returns ``{"fingerprint", "instinct": f32[E], "rows": [...]}``; rows lack the
        method's cost and share, which the caller adds.
        """
        episodes, keys = self.episodes(shot)
        instinct, rows = None, []
        for head, evaluator in self.evaluators.items():
            t = time.perf_counter()
            r = evaluator(
                keys,
                episodes,
                self.transfers[method],
                on_step=on_step,
                instinct=instinct,
            )
            instinct = r.instinct  # it does not depend on the head: computed once
            rows.append(
                {
                    "method": method,
                    "head": head,
                    "shot": shot,
                    "recipe": evaluator.recipe.describe(),
                    "accuracy": mean_confidence(r.final),
                    "instinct": mean_confidence(r.instinct),
                    "curve_steps": list(evaluator.recipe.curve_steps),
                    "curve": np.asarray(r.curve).mean(0).tolist(),
                    "seconds": time.perf_counter() - t,
                    "per_episode": np.asarray(r.final).tolist(),
                }
            )
        return {
            "fingerprint": episode_fingerprint(episodes),
            "instinct": np.asarray(instinct),
            "rows": rows,
        }

    def frozen_prototypes(self, shot: int) -> np.ndarray:
        """Nearest-prototype accuracy on the pretrained network's frozen features: f32[E]."""
        episodes, keys = self.episodes(shot)
        evaluator = next(iter(self.evaluators.values()))
        state = evaluator.init(keys, episodes, self.transfers["proto-frozen"])
        return np.asarray(evaluator.instinct(state, episodes))


# One Suite per worker process, built by the pool's initializer.
_WORKER_SUITE: Suite | None = None


def _start_worker(config_json, learngene_path, workdir):
    """Pool initializer: builds the worker's Suite (from caches)."""
    global _WORKER_SUITE
    configure_jax()
    c = ml_collections.ConfigDict(json.loads(config_json))
    _WORKER_SUITE = Suite(c, pathlib.Path(learngene_path), pathlib.Path(workdir))


def _worker_job(shot, method, progress):
    return _WORKER_SUITE.job(shot, method, on_step=progress.put)


def resolve_workers(c: ml_collections.ConfigDict) -> int:
    """``workers``: 0 means one per CPU core on the CPU backend, one on GPU/TPU."""
    return distributed.default_workers(int(c.workers))


def run_jobs(suite, jobs, workers, config_json, learngene_path, workdir, bar):
    """Runs ``jobs`` [(shot, method)] in this process or in ``workers`` processes.

    On CPU, one process per core pinned to it: XLA CPU keeps one core busy with these small
    networks, and two pinned processes each ran a 5-shot descendant as fast as one process
    alone (README, "The evidence suite"). Where a job runs changes results at float rounding
    (a pinned process sums in another order): at the default sizes, a near-tied query in a
    few of 200 episodes. Episodes and keys do not depend on it.
    """
    # Most expensive first (more shots), so the workers finish together.
    jobs = sorted(jobs, key=lambda j: -j[0])
    if workers <= 1:
        return {job: suite.job(*job, on_step=bar.update) for job in jobs}
    start = (config_json, str(learngene_path), str(workdir))
    with distributed.worker_pool(workers, _start_worker, start) as (pool, progress):
        futures = [pool.submit(_worker_job, *job, progress) for job in jobs]
        return dict(zip(jobs, distributed.wait_all(futures, progress, bar.update)))


def run(
    c: ml_collections.ConfigDict,
    learngene_path: pathlib.Path,
    workdir: pathlib.Path,
    *,
    quiet: bool = False,
) -> dict:
    """The evidence suite; returns the results (also written to the workdir)."""
    start = time.perf_counter()
    suite = Suite(c, learngene_path, workdir, quiet=quiet)
    meta, shots = suite.meta, parse_shots(c.eval_shots)
    config_json = c.to_json()
    (workdir / "config.json").write_text(
        json.dumps(
            {"learngene": str(learngene_path), **json.loads(config_json)},
            indent=2,
            sort_keys=True,
        )
    )
    workers = resolve_workers(c)
    jobs = [(shot, method) for shot in shots for method in suite.tuned]
    total = len(jobs) * len(suite.heads) * suite.steps
    with tqdm(
        total=total, desc="descendants", disable=quiet, bar_format=PROGRESS_FORMAT
    ) as bar:
        bar.set_postfix_str(f"{workers} worker process(es)")
        results = run_jobs(
            suite, jobs, workers, config_json, learngene_path, workdir, bar
        )

    rows, fingerprints = [], {}
    common = {
        "way": c.eval_way,
        "query": c.eval_query,
        "episodes": c.inherit_episodes,
        "split": c.eval_split,
    }
    for shot in shots:
        for method in suite.methods:
            if method == "proto-frozen":
                found = results.get((shot, "pretrain-full"))
                t = time.perf_counter()
                # pretrain-full's instinct is exactly this (same network, same readout).
                final = found["instinct"] if found else suite.frozen_prototypes(shot)
                method_rows = [
                    {
                        "method": method,
                        "head": "frozen features",
                        "shot": shot,
                        "recipe": "none (nearest prototype)",
                        "accuracy": mean_confidence(final),
                        "instinct": mean_confidence(final),
                        "curve_steps": [0],
                        "curve": [float(np.mean(final))],
                        "seconds": time.perf_counter() - t,
                        "per_episode": np.asarray(final).tolist(),
                    }
                ]
            else:
                method_rows = results[shot, method]["rows"]
                fingerprints[shot] = results[shot, method]["fingerprint"]
            for row in method_rows:
                rows.append(
                    {
                        **common,
                        **row,
                        "episode_fingerprint": fingerprints.get(shot)
                        or episode_fingerprint(suite.episodes(shot)[0]),
                        "params_transferred": suite.shares[method],
                        "cost": suite.costs[method],
                    }
                )
    # Every job saw the same episodes of its shot setting (whichever process ran it).
    for (shot, _), result in results.items():
        if result["fingerprint"] != fingerprints[shot]:
            raise RuntimeError(f"{shot}-shot episodes differ between jobs")
    (workdir / "results.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    table = results_table(c, rows, shots, meta)
    (workdir / "results.md").write_text(table + "\n")
    summary = {
        "learngene": str(learngene_path),
        "descendant": {"model": c.model, "width": c.width, "dataset": c.dataset},
        "rows": rows,
        "episode_fingerprints": fingerprints,
        "workers": workers,
        "total_seconds": time.perf_counter() - start,
        "backend": jax.default_backend(),
    }
    (workdir / "results.json").write_text(json.dumps(summary, indent=1))
    write_plots(c, rows, meta, learngene_path, workdir)
    summary["table"] = table
    return summary


def results_table(c, rows: list[dict], shots, meta: dict) -> str:
    """Markdown: one row per (method, head); instinct and accuracy per shot setting."""
    header = "| method | head | params transferred | cost |"
    rule = "| --- | --- | --- | --- |"
    for shot in shots:
        header += f" instinct {shot}-shot | {shot}-shot |"
        rule += " --- | --- |"
    first = rows[0]
    lines = [
        f"{c.eval_way}-way, {c.eval_query} queries per class, {c.inherit_episodes} "
        f"episodes (seed {c.eval_seed}) of the {c.dataset} meta-{c.eval_split} classes; "
        f"descendants {c.model} x{c.width:g} fine-tuned with {first['recipe']} "
        f"(head as given); learngene from {meta['model']['name']} "
        f"x{meta['model']['width']:g}; mean and 95% CI (%)",
        "",
        header,
        rule,
    ]
    seen = []
    for row in rows:
        if (row["method"], row["head"]) not in seen:
            seen.append((row["method"], row["head"]))
    for method, head in seen:
        cells = {
            r["shot"]: r for r in rows if (r["method"], r["head"]) == (method, head)
        }
        r0 = next(iter(cells.values()))
        line = (
            f"| {method} | {head} | {100 * r0['params_transferred']:.1f}% "
            f"| {describe_cost(r0['cost'])} |"
        )
        for shot in shots:
            r = cells[shot]
            line += (
                f" {100 * r['instinct'][0]:.1f} ± {100 * r['instinct'][1]:.1f} |"
                f" {100 * r['accuracy'][0]:.1f} ± {100 * r['accuracy'][1]:.1f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def describe_cost(cost: dict) -> str:
    what = cost.get("what")
    if what == "evolution" and "lifetime_steps" in cost:
        return (
            f"evolution: {cost['lifetime_steps']} lifetime + {cost['critic_steps']} "
            f"critic steps, {cost['seconds']:.0f} s"
        )
    if what == "pre-training":
        return f"pre-training: {cost['steps']} steps, {cost['seconds']:.0f} s"
    return "none" if what == "none" else "unknown"


def write_plots(c, rows, meta, learngene_path: pathlib.Path, workdir: pathlib.Path):
    curves = {}
    for r in rows:
        if r["method"] == "proto-frozen":
            continue
        add_curve(curves, f"{r['way']}-way {r['shot']}-shot, {r['head']} head", r)
    if curves:
        plots.plot_curves(curves, workdir / "curves.png")
    plots.plot_share(rows, workdir / "share.png")
    history = meta.get("history")
    if history is None:  # files from before the history was stored: the run's metrics
        metrics = pathlib.Path(learngene_path).parent / "metrics.jsonl"
        if metrics.is_file():
            history = [json.loads(x) for x in metrics.read_text().splitlines() if x]
    if history and all(k in history[0] for k in FITNESS_KEYS[:3]):
        plots.plot_fitness(history, workdir / "fitness.png")


# --------------------------------------------------------------------------- CLI


def stop_message(workdir: pathlib.Path) -> str:
    """What an interrupted evidence suite keeps in ``workdir`` (the line after
    ``interrupted: ``)."""
    cached = sorted(workdir.glob("pretrained/*/metadata.json"))
    kept = (
        f"{len(cached)} pretrained network(s) cached in {workdir / 'pretrained'} (not "
        "trained again)"
        if cached
        else f"nothing is cached in {workdir}"
    )
    return (
        f"{kept}; results are written once every descendant has run: run the same "
        "command again to run them"
    )


@stopping.command
def main(argv: list[str] | None = None) -> int:
    defaults = load_config("omniglot")
    parser = build_parser(defaults)
    parser.prog = "python -m gtl_jax.inherit"
    parser.description = (
        "Inherit a learngene file into descendants and compare them, on the same seeded "
        "few-shot episodes, with scratch, pretrain-full, pretrain-circuit, Heur-LG and "
        "frozen-feature prototypes. The descendant's model and width default to the "
        "learngene's ancestor; --model/--width give wider or deeper descendants."
    )
    parser.add_argument(
        "--learngene",
        default="runs/omniglot/learngene",
        help="learngene file (directory) written by python -m gtl_jax.evolve",
    )
    args = parser.parse_args(argv)
    try:
        c = resolve_config(args)
        meta = checkpoint.read_metadata(args.learngene)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Unless given, the descendant is the ancestor's architecture.
    if args.model is None:
        c.model = meta["model"]["name"]
    if args.width is None:
        c.width = float(meta["model"]["width"])
    learngene_path = pathlib.Path(args.learngene)
    workdir = pathlib.Path(args.workdir or learngene_path.parent / "inherit")
    stopping.describe(lambda: stop_message(workdir))
    configure_jax()
    try:
        summary = run(c, learngene_path, workdir, quiet=args.quiet)
    except COMMAND_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(summary["table"])
    print(smoke_note(args.config), end="")
    print(f"\nwall time {summary['total_seconds']:.0f} s; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
