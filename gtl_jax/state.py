"""What an evolution is made of: its config (``EvolutionConfig``) and the pytrees a
generation passes around (``EvolutionState``, ``Pools``, ``Tasks``, ``Evaluation``), with the
key schedule of a generation and the conversion of its metrics into logged values.

``gtl_jax.evolution`` computes with them; ``gtl_jax.sharding`` places them on devices;
checkpoints hold ``EvolutionState``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import struct

from gtl_jax.data.augment import AUGMENTATIONS
from gtl_jax.data.pool import Episode
from gtl_jax.learngene import Learngene
from gtl_jax.population import OPTIMIZERS


def generation_keys(key: jax.Array) -> jax.Array:
    """A generation's keys: hosts, tasks, lifetime steps, critics, reproduction."""
    return jax.random.split(key, 5)


# --------------------------------------------------------------------------- state


@struct.dataclass
class EvolutionState:
    """Everything a run needs to continue; every array of ``learngenes`` has a leading P.

    Attributes:
      generation: i32[], the number of generations completed.
      learngenes: the learngenes of the next hosts (stacked, leading P).
      parents: i32[P], lineage: the index (in the previous generation) of each one's parent.
      best_learngene: the fittest trained learngene of the last completed generation.
      best_fitness: f32[], its fitness.
      scores: f32[P], the lineage score each next host inherits from its parent
        (``selection="score"``; zeros otherwise).
      trained: the trained learngenes of the last completed generation (stacked, leading
        P), from which the final learngene is chosen (``choose_final``).
      fitness: f32[P], their fitness (NaN for diverged ones).
      life_genes: the next hosts' heritable lifetime hyperparameters, ``{name: f32[P]}``
        (``EvolutionConfig.life_genes``); None without them.
    """

    generation: jax.Array
    learngenes: Learngene
    parents: jax.Array
    best_learngene: Learngene
    best_fitness: jax.Array
    scores: jax.Array
    trained: Learngene
    fitness: jax.Array
    life_genes: dict[str, jax.Array] | None = None

    # The fields with a leading population axis P (``gtl_jax.sharding`` splits them over
    # devices; the others are replicated).
    POPULATION_FIELDS = (
        "learngenes",
        "parents",
        "scores",
        "trained",
        "fitness",
        "life_genes",
    )


@struct.dataclass
class Pools:
    """The images a generation samples from: an argument of the pure functions, so that a
    jitted generation takes the pools as inputs instead of embedding them as constants.

    Attributes:
      train: u8[C_train, M, H, W, Ch], the meta-train classes (lifetime tasks).
      val: u8[C_val, M, H, W, Ch], the meta-validation classes (critic episodes).
    """

    train: jax.Array
    val: jax.Array


@struct.dataclass
class Tasks:
    """What a generation asks of its members (``Evolution.ask``): the per-member arrays have
    a leading P; the critics' episodes and keys are the same for every member.

    Attributes:
      host_keys: key[P], each host network's initialisation.
      classes: i32[P, W], each lifetime's ``life_way`` meta-train classes.
      life_keys: key[P, S], each lifetime step's batch (and augmentation).
      episodes: the critics' meta-validation episodes (leading axis C, ``num_critics``).
      critic_keys: key[C], the critics' head initialisation and fine-tuning.
    """

    host_keys: jax.Array
    classes: jax.Array
    life_keys: jax.Array
    episodes: Episode
    critic_keys: jax.Array


@struct.dataclass
class Evaluation:
    """Steps 1-4 of a generation for P members (``Evolution.evaluate``, or an executor's
    loop over the same per-member functions): what ``Evolution.tell`` needs.

    Attributes:
      trained: the learngenes extracted after lifetime learning (stacked, leading P).
      life_losses: f32[P, S], the lifetime losses (S >= 1: zeros for a run without
        lifetime steps).
      diverged: bool[P], a non-finite loss or learngene.
      fitness: f32[P], mean critic query accuracy (diverged ones included).
      instinct: f32[P, C], the critics' accuracy before fine-tuning.
    """

    trained: Learngene
    life_losses: jax.Array
    diverged: jax.Array
    fitness: jax.Array
    instinct: jax.Array


def host_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A generation's array metrics (``Evolution.step``) as the JSON-ready values a run logs:
    Python numbers and lists."""
    m = jax.device_get(metrics)
    out = {}
    for k, v in m.items():
        v = np.asarray(v)
        if v.ndim:
            out[k] = v.tolist()
        elif v.dtype.kind in "iub":
            out[k] = int(v)
        else:
            out[k] = float(v)
    return out


# What tournaments rank: raw fitness; the lineage score (ECO's learngene score: fitness plus
# the parent's score decayed by score_decay); or nothing (parents drawn at random: a control).
SELECTIONS = ("tournament", "score", "none")
# Heritable lifetime hyperparameters a member may carry (``EvolutionConfig.life_genes``).
LIFE_GENES = ("lr", "weight_decay", "momentum")
# The optax hyperparameter each life gene sets (EvolutionConfig.life_genes).
HYPERPARAMS = {
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
}
# The stream of the life genes' draws, folded into generation 0's key and each generation's
# reproduction key (the learngenes' streams are as without life genes).
LIFE_GENE_STREAM = 2**31 - 3
# The stream of the fixed critic episodes (fixed_critics), folded into the root key.
CRITIC_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The sizes and knobs of the loop; the defaults are the default config's
    (``configs/omniglot.py`` builds its ``evolution`` section from them).

    Attributes (beyond the sizes):
      generations: G, the number of generations a run evolves.
      life_optimizer: "sgd" (with ``life_momentum``) or "adam" (ViTs learn little in a
        lifetime with SGD), at ``life_lr`` with ``life_weight_decay`` as L2.
      critic_steps: fine-tuning steps of each critic (the critics otherwise follow the
        descendants' recipe).
      life_closed: keep the weights from non-gene inputs into gene outputs at zero during
        lifetime learning, so the circuit a host trains is the closed sub-network it passes
        on (otherwise extraction cuts weights the circuit relied on in life).
      fixed_critics: every generation's critics fine-tune on the same meta-validation
        episodes and keys (drawn from the root key), so fitness is comparable across
        generations; otherwise each generation draws new ones.
      selection: "tournament" (on fitness), "score" (on the lineage score) or "none".
      score_decay: the weight of the parent's score in a child's lineage score.
      final_candidates: the fittest members of the last generation re-scored before the
        final learngene is chosen (``Evolution.choose_final``).
      rescore_episodes: the meta-validation episodes they are re-scored on (0: the fittest
        is chosen).
      life_genes: heritable lifetime hyperparameters (``LIFE_GENES``, comma-separated; empty:
        none), drawn within ``life_gene_spread`` of the config's at generation 0, inherited
        with the learngene and mutated by ``life_gene_sigma`` (log-normal).

    Raises:
      ValueError: a field is impossible; the message starts with ``field=value:``.
    """

    pop_size: int = dataclasses.field(
        default=9, metadata={"help": "population size P (divisible by tournament_size)"}
    )
    tournament_size: int = dataclasses.field(
        default=3, metadata={"help": "tournament group size k"}
    )
    generations: int = dataclasses.field(
        default=8, metadata={"help": "number of generations G"}
    )
    life_way: int = dataclasses.field(
        default=50, metadata={"help": "classes per lifetime task (N_life)"}
    )
    life_steps: int = dataclasses.field(
        default=100, metadata={"help": "optimizer steps of lifetime learning (S_life)"}
    )
    life_batch: int = dataclasses.field(
        default=32, metadata={"help": "lifetime batch size"}
    )
    life_optimizer: str = dataclasses.field(
        default="sgd",
        metadata={"help": "lifetime optimizer: sgd (with momentum) or adam"},
    )
    life_lr: float = dataclasses.field(
        default=0.05, metadata={"help": "lifetime learning rate"}
    )
    life_momentum: float = dataclasses.field(
        default=0.9, metadata={"help": "lifetime SGD momentum (sgd only)"}
    )
    life_weight_decay: float = dataclasses.field(
        default=5e-4, metadata={"help": "lifetime weight decay"}
    )
    num_critics: int = dataclasses.field(
        default=4, metadata={"help": "critic networks per individual (C)"}
    )
    critic_way: int = dataclasses.field(
        default=5,
        metadata={"help": "ways of critic episodes (meta-validation classes)"},
    )
    critic_shot: int = dataclasses.field(
        default=1, metadata={"help": "shots of critic episodes"}
    )
    critic_query: int = dataclasses.field(
        default=15, metadata={"help": "queries per class of critic episodes"}
    )
    critic_steps: int = dataclasses.field(
        default=20, metadata={"help": "fine-tuning steps of each critic (S_critic)"}
    )
    mutation_sigma: float = dataclasses.field(
        default=0.1, metadata={"help": "mutation noise, relative to each tensor's std"}
    )
    mutation_rate: float = dataclasses.field(
        default=0.5, metadata={"help": "probability that a tensor is mutated"}
    )
    zero_cross: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "zero the weights from non-gene inputs into gene outputs at insertion"
        },
    )
    augment: str = dataclasses.field(
        default="none",
        metadata={
            "help": "lifetime augmentation, on device: none or crop_flip (pad S//8, crop, "
            "flip)"
        },
    )
    life_closed: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "keep the weights from non-gene into gene channels at zero during "
            "lifetime learning (the circuit a host trains is the one it passes on)"
        },
    )
    fixed_critics: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "critics fine-tune on the same meta-validation episodes every generation "
            "(fitness comparable across generations)"
        },
    )
    selection: str = dataclasses.field(
        default="tournament",
        metadata={
            "help": "what tournaments rank: tournament (fitness), score (ECO's lineage score) "
            "or none (parents drawn at random: the no-selection control)"
        },
    )
    score_decay: float = dataclasses.field(
        default=0.6,
        metadata={"help": "lineage score: fitness plus this times the parent's score"},
    )
    final_candidates: int = dataclasses.field(
        default=3,
        metadata={
            "help": "the fittest members of the last generation re-scored before the final "
            "learngene is chosen"
        },
    )
    rescore_episodes: int = dataclasses.field(
        default=100,
        metadata={
            "help": "meta-validation episodes the final candidates are re-scored on (0: the "
            "fittest is chosen)"
        },
    )
    life_genes: str = dataclasses.field(
        default="",
        metadata={
            "help": "heritable lifetime hyperparameters each member carries, inherited "
            "and mutated with its learngene: comma-separated, from lr, weight_decay, "
            "momentum (sgd only); empty: none"
        },
    )
    life_gene_spread: float = dataclasses.field(
        default=2.0,
        metadata={
            "help": "generation 0 draws each life gene log-uniformly within [v / spread, "
            "v * spread] around its config value v (life_lr, ...)"
        },
    )
    life_gene_sigma: float = dataclasses.field(
        default=0.2,
        metadata={
            "help": "a child's life genes are its parent's times exp(sigma * N(0, 1)) "
            "(for momentum, 1 - momentum is; it stays below 1); the elite keeps its parent's"
        },
    )

    @property
    def gene_names(self) -> tuple[str, ...]:
        """The life genes, in ``LIFE_GENES`` order."""
        names = {n.strip() for n in self.life_genes.split(",") if n.strip()}
        return tuple(n for n in LIFE_GENES if n in names)

    def gene_values(self) -> dict[str, float]:
        """Every life gene's config value: the centre of generation 0's draw."""
        values = {
            "lr": self.life_lr,
            "weight_decay": self.life_weight_decay,
            "momentum": self.life_momentum,
        }
        return {name: float(values[name]) for name in self.gene_names}

    def __post_init__(self):
        def need(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        for field in (
            "pop_size",
            "tournament_size",
            "generations",
            "life_way",
            "life_batch",
            "num_critics",
            "critic_way",
            "critic_shot",
            "critic_query",
            "final_candidates",
        ):
            need(int(getattr(self, field)) >= 1, field, "must be >= 1")
        for field in ("life_steps", "critic_steps", "rescore_episodes"):
            need(int(getattr(self, field)) >= 0, field, "must be >= 0")
        need(
            self.pop_size % self.tournament_size == 0,
            "pop_size",
            f"must be divisible by tournament_size={self.tournament_size}",
        )
        need(self.mutation_sigma >= 0, "mutation_sigma", "must be >= 0")
        need(0 <= self.mutation_rate <= 1, "mutation_rate", "must be in [0, 1]")
        need(
            self.augment in AUGMENTATIONS, "augment", f"must be one of {AUGMENTATIONS}"
        )
        need(
            self.life_optimizer in OPTIMIZERS,
            "life_optimizer",
            f"must be one of {OPTIMIZERS}",
        )
        need(self.selection in SELECTIONS, "selection", f"must be one of {SELECTIONS}")
        need(0 <= self.score_decay <= 1, "score_decay", "must be in [0, 1]")
        names = [n.strip() for n in self.life_genes.split(",") if n.strip()]
        unknown = sorted(set(names) - set(LIFE_GENES))
        need(
            not unknown,
            "life_genes",
            f"{unknown[0] if unknown else ''!r} is not one of {LIFE_GENES}",
        )
        need(
            "momentum" not in names or self.life_optimizer == "sgd",
            "life_genes",
            "momentum is a gene of life_optimizer=sgd only",
        )
        for name, value in self.gene_values().items():
            need(
                value > 0,
                "life_genes",
                f"{name} evolves multiplicatively: its config "
                f"value must be > 0, not {value}",
            )
        need(self.life_gene_spread >= 1, "life_gene_spread", "must be >= 1")
        need(self.life_gene_sigma >= 0, "life_gene_sigma", "must be >= 0")
