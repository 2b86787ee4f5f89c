"""The evidence suite: descendants of a learngene and of the baselines on the same episodes.

``Suite`` loads a learngene file and the data, builds (or reads from the workdir's cache) the
pre-trained network the baselines are cut from, and runs jobs: one method's descendants at one
shot setting, on fixed seeded episodes with fixed descendant keys (``run_jobs``: in this
process or in worker processes pinned one per core). ``python -m gtl_jax.inherit`` runs every
method; ``python -m gtl_jax.evolve``'s final table runs learngene and scratch.

Methods (``gtl_jax.config.METHODS``):

- ``learngene``: the learngene file inherited (cross weights zeroed if ``zero_cross``).
- ``scratch``: random initialisation.
- ``pretrain-full``: every conv layer of a network of the descendant's architecture pretrained
  conventionally on all meta-train classes (``gtl_jax.pretrain``).
- ``pretrain-circuit``: the learngene's channel circuit (same layers, same k) cut from that
  pretrained network: what evolution adds over plain pre-training at the same share.
- ``heur-lg``: the last ``suite.heur_layers`` conv layers of the pretrained network, whole, on
  random lower layers (Heur-LG, AAAI 2022).
- ``proto-frozen``: no fine-tuning: nearest support prototype on the pretrained network's
  frozen features (for comparison with ProtoNet-style tables).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gtl_jax import attention, checkpoint, distributed
from gtl_jax.build import (
    configure_jax,
    descendant_recipe,
    fixed_episodes,
    load_pools,
    model_of,
    pretrain_config,
    require_splits,
)
from gtl_jax.config import METHODS, ConfigError, validate_config
from gtl_jax.data import augment_fn
from gtl_jax.descendants import fine_tuned, mean_confidence
from gtl_jax.executors import DescendantEvaluator
from gtl_jax.learngene import (
    GeneLayer,
    Learngene,
    LearngeneSpec,
    check_fits,
    extract_learngene,
    learngene_size,
    make_spec,
    spec_from_json,
)
from gtl_jax.pretrain import pretrain
from gtl_jax.progress import progress_bar

PRETRAINED_METHODS = frozenset(METHODS[2:])


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

    The key holds everything the pretrained weights depend on: the network (``model.name``,
    ``model.width``, ``model.precision``, classes), the images themselves (a digest of
    ``train_images``: the dataset, its folder or file, its split and ``image_size``),
    ``seed``, ``evolution.augment``, every ``PretrainConfig`` field (``suite.pretrain_*``),
    the closed circuit, and JAX's random-bit generator (the command line's
    non-partitionable threefry, ``configure_jax``, or JAX's default). Nothing else: e.g.
    ``model.ratio`` counts only through the closed circuit, ``zero_cross`` not at all.
    """
    key = {
        "model": c.model.name,
        "width": c.model.width,
        "precision": c.model.precision,
        "dataset": c.data.dataset,
        "images": images_digest(train_images),
        "image_shape": list(train_images.shape[2:]),
        "classes": int(train_images.shape[0]),
        "seed": c.seed,
        "augment": c.evolution.augment,
        **dataclasses.asdict(pretrain_config(c)),
        "closed": None if closed_spec is None else closed_spec.to_json(),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{c.model.name}-x{c.model.width:g}-{c.data.dataset}-{digest}"
    return workdir / "pretrained" / name, key


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
    pc = pretrain_config(c)
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
    with progress_bar(
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
            augment_fn=augment_fn(c.evolution.augment, train_images.shape[2]),
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
    variables = {"params": state.params}
    # A ViT has no BatchNorm: its saved variables are then the model's own, as restored.
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
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


def split_names(value: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")`` (the section's dataclass has checked the names)."""
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


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
        self.c = c
        s = c.suite
        self.methods = split_names(s.methods)
        self.heads = split_names(s.heads)
        self.tuned = [m for m in self.methods if m != "proto-frozen"]
        learngene, self.meta = checkpoint.load_learngene(learngene_path)
        spec = spec_from_json(self.meta["spec"])
        pools = load_pools(c)
        require_splits(pools, (s.eval_split,), c, "evaluation (eval_split)")
        pretrained = sorted(PRETRAINED_METHODS & set(self.methods))
        if pretrained:
            require_splits(
                pools, ("train",), c, f"pre-training of {', '.join(pretrained)}"
            )
        validate_config(c, pools, evolution=False, eval_split=s.eval_split)
        eval_pool = pools[s.eval_split]
        image_shape = eval_pool.image_shape
        way = c.evaluation.eval_way
        target = model_of(c, way, spec)
        m = c.model
        try:
            check_fits(spec, target, image_shape[-1])
        except ValueError as e:
            raise checkpoint.LearngeneFileError(
                f"learngene file {learngene_path} (from {self.meta['model']}) cannot be "
                f"inherited by {m.name} x{m.width:g} on {c.data.dataset}: {e}"
            ) from None
        if "heur-lg" in self.methods and not hasattr(target, "conv_graph"):
            raise ConfigError(
                f"config field suite.methods={s.methods!r}: heur-lg transfers conv layers; "
                f"{m.name} has none (leave heur-lg out)"
            )
        if "heur-lg" in self.methods and s.heur_layers > len(target.conv_graph()):
            raise ConfigError(
                f"config field suite.heur_layers={s.heur_layers}: {m.name} has only "
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
            params, stats = variables["params"], variables.get("batch_stats", {})
            in_ch = image_shape[-1]
            full = extract_learngene(make_spec(target, 1.0, in_ch), params, stats)
            self.transfers |= {
                "pretrain-full": full,
                "proto-frozen": full,
                "pretrain-circuit": extract_learngene(spec, params, stats),
            }
            if "heur-lg" in self.methods:  # conv layers (checked above)
                self.transfers["heur-lg"] = extract_learngene(
                    heur_spec(target, in_ch, s.heur_layers), params, stats
                )
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
                n_way=way,
                strategy=c.execution.strategy,
                zero_cross=c.evolution.zero_cross,
            )
            for head in self.heads
        }
        self.images = jnp.asarray(eval_pool.images)
        self.target = target
        self._episodes = {}

    def episodes(self, shot: int):
        """The fixed episodes and descendant keys of a shot setting (seeded)."""
        if shot not in self._episodes:
            e = self.c.evaluation
            key = jax.random.fold_in(jax.random.key(e.eval_seed), shot)
            self._episodes[shot] = fixed_episodes(
                key,
                self.images,
                episodes=self.c.suite.inherit_episodes,
                n_way=e.eval_way,
                k_shot=shot,
                n_query=e.eval_query,
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

    def attention(
        self, shot: int, methods: Sequence[str], episodes: int, per_episode: int
    ) -> dict:
        """Attention rollout maps of fine-tuned ViT descendants on query images of unseen
        classes (``gtl_jax.attention``), for the first ``episodes`` episodes of a shot
        setting: the same descendants as the jobs' (same keys, episodes, first head).

        Returns ``{"images": u8[n, S, S, Ch], "maps": {method: f32[n, g, g]},
        "shares": {method: (mean share on foreground, mean foreground area)}}`` with
        ``n = episodes * per_episode`` query images (the first of each episode).
        """
        eps, keys = self.episodes(shot)
        eps = jax.tree.map(lambda a: a[:episodes], eps)
        recipe = next(iter(self.evaluators.values())).recipe
        model, patch = self.target, self.target.patch
        images = eps.query_x[:, :per_episode]
        mask = attention.foreground(images.reshape(-1, *images.shape[2:]), patch)
        out = {"images": np.asarray(images.reshape(-1, *images.shape[2:]))}
        out["maps"], out["shares"] = {}, {}
        for method in methods:

            def one(key, episode, transfer=self.transfers[method]):
                state = fine_tuned(
                    model,
                    recipe,
                    key,
                    episode,
                    transfer,
                    n_way=self.c.evaluation.eval_way,
                    zero_cross=self.c.evolution.zero_cross,
                )
                return attention.maps(
                    model, state.params, episode.query_x[:per_episode]
                )

            m = jax.jit(jax.vmap(one))(keys[:episodes], eps)
            m = m.reshape(-1, *m.shape[2:])
            inside, area = attention.foreground_share(m, mask)
            out["maps"][method] = np.asarray(m)
            out["shares"][method] = (float(inside.mean()), float(area.mean()))
        return out

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
    """``execution.workers``: 0 means one per CPU core on the CPU backend, one on GPU/TPU."""
    return distributed.default_workers(int(c.execution.workers))


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
