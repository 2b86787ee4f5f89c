"""The command line the three commands share: ``--config`` and its overrides (absl flags with
``ml_collections.config_flags``), each command's own flags, ``--help``, and the one error
handler (``command``): an impossible config, data or file is one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from gtl_jax import checkpoint, stopping
from gtl_jax.config import (
    DEFAULT_CONFIG,
    SECTIONS,
    ConfigError,
    flatten,
    known_configs,
    load_config,
    resolve_config,
)
from gtl_jax.data import DataError

# Descendant progress advances by fractions of a step when descendants run one at a time.
PROGRESS_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} steps "
    "[{elapsed}<{remaining}{postfix}]"
)


# What a command reports as one line and exit status 2 (bad config, data, files).
COMMAND_ERRORS = (
    ConfigError,
    DataError,
    checkpoint.LearngeneFileError,
    checkpoint.CheckpointError,
)


# One line per field: what `--help` prints for the flag of the same name.
FIELD_HELP = {
    "seed": "seed of the evolution",
    "data.dataset": "dataset name: omniglot, cifar_fs, mini_imagenet, imagenet or npz",
    "data.data_dir": "dataset folder; default: $GTL_DATA_DIR or ../shared/data/<dataset>",
    "data.image_size": "images are resized to image_size x image_size",
    "data.classes": "imagenet: train,val,test class counts of the class split "
    "(evolution, critics, downstream tasks)",
    "data.classes_per_generation": "imagenet: evolution classes in a generation's "
    "lifetime pool, drawn anew every generation",
    "data.images_per_class": "imagenet: images per class in a generation's lifetime pool",
    "data.eval_images_per_class": "imagenet: images per class of the critics' and the "
    "downstream pools (fixed for the run)",
    "model.name": "architecture: vgg11, vgg13, vgg16, resnet12, or a ViT: vit_fs (for "
    "28-84 pixel images), vit_tiny, vit_small",
    "model.width": "width multiplier of every conv layer",
    "model.precision": "computation dtype: float32, or bfloat16 (mixed precision for "
    "GPU/TPU: bfloat16 convs, float32 parameters, BatchNorm statistics and loss; no faster "
    "on CPU)",
    "model.ratio": "learngene ratio r: each conv layer's gene owns round(r * C) output "
    "channels",
    "model.patch": "ViTs: the side of a patch in pixels (0: the model's own)",
    "model.closed_norm": "ViTs: LayerNorms normalise the learngene's dims apart, so its "
    "circuit is exactly closed (false: over all dims; the circuit then leaks)",
    "model.forms": "how the layers compute: auto (cpu on the CPU backend, xla on GPU/TPU), "
    "cpu (shifted-matmul convs on small maps, matmul kernel gradients, reshaped max-pool) "
    "or xla (lax.conv and max_pool); the same numbers to float rounding",
    "evolution.pop_size": "population size P (divisible by tournament_size)",
    "evolution.tournament_size": "tournament group size k",
    "evolution.generations": "number of generations G",
    "evolution.life_way": "classes per lifetime task (N_life)",
    "evolution.life_steps": "optimizer steps of lifetime learning (S_life)",
    "evolution.life_batch": "lifetime batch size",
    "evolution.life_optimizer": "lifetime optimizer: sgd (with momentum) or adam",
    "evolution.life_lr": "lifetime learning rate",
    "evolution.life_momentum": "lifetime SGD momentum (sgd only)",
    "evolution.life_weight_decay": "lifetime weight decay",
    "evolution.num_critics": "critic networks per individual (C)",
    "evolution.critic_way": "ways of critic episodes (meta-validation classes)",
    "evolution.critic_shot": "shots of critic episodes",
    "evolution.critic_query": "queries per class of critic episodes",
    "evolution.critic_steps": "fine-tuning steps of each critic (S_critic)",
    "evolution.mutation_sigma": "mutation noise, relative to each tensor's std",
    "evolution.mutation_rate": "probability that a tensor is mutated",
    "evolution.zero_cross": "zero the weights from non-gene inputs into gene outputs at "
    "insertion",
    "evolution.augment": "lifetime augmentation, on device: none or crop_flip (pad S//8, "
    "crop, flip)",
    "evolution.life_closed": "keep the weights from non-gene into gene channels at zero "
    "during lifetime learning (the circuit a host trains is the one it passes on)",
    "evolution.fixed_critics": "critics fine-tune on the same meta-validation episodes "
    "every generation (fitness comparable across generations)",
    "evolution.selection": "what tournaments rank: tournament (fitness), score (ECO's "
    "lineage score) or none (parents drawn at random: the no-selection control)",
    "evolution.score_decay": "lineage score: fitness plus this times the parent's score",
    "evolution.final_candidates": "the fittest members of the last generation re-scored "
    "before the final learngene is chosen",
    "evolution.rescore_episodes": "meta-validation episodes the final candidates are "
    "re-scored on (0: the fittest is chosen)",
    "descendants.head": "descendant head init: random, zero or prototype",
    "descendants.optimizer": "descendant (and critic) optimizer: adam or sgd",
    "descendants.learning_rate": "descendant (and critic) learning rate",
    "descendants.steps": "descendant fine-tuning steps S_d",
    "descendants.eval_every": "learning-curve resolution in steps",
    "descendants.batch_norm": "descendant BatchNorm while fine-tuning: batch (support "
    "statistics, running ones updated) or frozen (inherited running statistics)",
    "evaluation.eval_episodes": "test episodes per shot setting (meta-test classes)",
    "evaluation.eval_way": "ways of test episodes",
    "evaluation.eval_shots": "comma-separated shot settings of test episodes, e.g. 1,5",
    "evaluation.eval_query": "queries per class of test episodes",
    "evaluation.eval_seed": "seed of the test episodes and descendant keys (same for "
    "every method)",
    "suite.pretrain_steps": "inherit: Adam steps of the pretrained baseline network",
    "suite.pretrain_batch": "inherit: batch size of pre-training (all meta-train classes)",
    "suite.pretrain_lr": "inherit: Adam learning rate of pre-training",
    "suite.pretrain_weight_decay": "inherit: L2 weight decay of pre-training",
    "suite.methods": "inherit: comma-separated methods (learngene, scratch, "
    "pretrain-full, pretrain-circuit, heur-lg, proto-frozen)",
    "suite.heads": "inherit: comma-separated descendant heads to compare (random, zero, "
    "prototype)",
    "suite.inherit_episodes": "inherit: test episodes per shot setting (at least 600 for "
    "the tables)",
    "suite.eval_split": "inherit: split the episodes come from: test (report) or val "
    "(tuning)",
    "suite.heur_layers": "inherit: Heur-LG transfers the last this many conv layers",
    "suite.seeds": "study: comma-separated seeds, one evolution (and one control) each",
    "suite.study_ways": "study: comma-separated ways of the evaluation settings",
    "suite.study_episodes": "study: fixed episodes of a 5-way setting (N-way: 5/N as "
    "many, the same number of queries)",
    "suite.study_methods": "study: comma-separated methods (learngene, no-selection, "
    "score-selection, untrained-circuit, pretrain-circuit-eq, pretrain-closed-eq, "
    "scratch, pretrain-full)",
    "suite.transfer_dataset": "study: another dataset the learngenes are evaluated on, "
    "5-way (digits, or empty for none)",
    "execution.strategy": "population execution: auto (vmap on GPU/TPU, loop on CPU), "
    "vmap or loop",
    "execution.workers": "worker processes, one pinned per core: the evolution's members "
    "split between them (one process, one device, loop strategy) and descendant jobs "
    "(final table, inherit) (0: one per CPU core on CPU, 1 on GPU/TPU)",
    "execution.distributed": "call jax.distributed.initialize() to join the processes of "
    "several hosts",
    "execution.processes": "CPU: run as this many joined processes on this machine, one "
    "per core, each pinned; the population is sharded over them (pop_size must be "
    "divisible by it)",
}


# --------------------------------------------------------------------------- command line


@dataclasses.dataclass(frozen=True)
class Flag:
    """A command's own flag (beside ``--config``): absl type ``kind`` (string or bool)."""

    name: str
    default: Any
    help: str
    kind: str = "string"


QUIET = Flag("quiet", False, "no progress bars", "bool")


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """A parsed command line: the config (overrides applied), the ``--config`` value as
    given, the fields the command line set, and the command's own flags."""

    config: ml_collections.ConfigDict
    spec: str
    overridden: frozenset[str]
    flags: dict[str, Any]


def _config_arg(argv: list[str]) -> tuple[int, str] | None:
    """The index and value of ``--config=VALUE`` / ``--config VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        if re.fullmatch(r"--?config", arg):
            if i + 1 >= len(argv):
                raise ConfigError("flag --config needs a value")
            return i, argv[i + 1]
        m = re.fullmatch(r"--?config=(.*)", arg)
        if m:
            return i, m.group(1)
    return None


def _override_paths(argv: list[str]) -> list[str]:
    """The config fields ``--config.a.b=v`` (or ``--noconfig.a.b``) in ``argv`` set."""
    paths = []
    for arg in argv:
        m = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if m:
            paths.append(m.group(1))
    return paths


def _field_order(item: tuple[str, Any]) -> tuple:
    """Sections in ``SECTIONS`` order (``seed`` first), fields in their dataclass's order."""
    section, _, field = item[0].partition(".")
    if section not in SECTIONS:
        return (-1 if section == "seed" else len(SECTIONS), 0, item[0])
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    index = names.index(field) if field in names else len(names)
    return (list(SECTIONS).index(section), index, item[0])


def help_text(
    prog: str,
    description: str,
    spec: str,
    c: ml_collections.ConfigDict,
    own: list[Flag],
) -> str:
    """``--help``: the command's flags, then every config field once (``section.field``)
    with its value in the chosen config and one line of help."""
    lines = [
        f"usage: {prog} [--config=CONFIG[:VARIANT]] [--config.SECTION.FIELD=VALUE ...] "
        + " ".join(
            f"[--{f.name}]" if f.kind == "bool" else f"[--{f.name}={f.name.upper()}]"
            for f in own
        ),
        "",
        description,
        "",
        "flags:",
        "  --config=CONFIG[:VARIANT]",
        "      config file PATH.py[:VARIANT] (e.g. configs/omniglot.py:smoke) or the name "
        f"of an installed one ({', '.join(known_configs())}); default: "
        f"configs/{DEFAULT_CONFIG}.py",
    ]
    for f in own:
        lines += [f"  --{f.name} (default: {f.default!r})", f"      {f.help}"]
    lines += ["", f"config fields (--config.SECTION.FIELD=VALUE; defaults of {spec}):"]
    for path, value in sorted(flatten(c.to_dict()).items(), key=_field_order):
        lines += [
            f"  --config.{path} (default: {value!r})",
            f"      {FIELD_HELP.get(path, path)}",
        ]
    return "\n".join(lines)


def parse_command_line(
    argv: Sequence[str], *, prog: str, description: str, own: Sequence[Flag] = ()
) -> CommandLine:
    """Parses ``argv`` with absl flags and ``ml_collections.config_flags``.

    ``--config=configs/omniglot.py:smoke`` (a config file and its variant; also the short
    ``--config=omniglot:smoke``; default ``configs/omniglot.py``), then overrides
    ``--config.evolution.generations=3``, and the command's ``own`` flags
    (``--workdir=...``, ``--quiet``). Empty ``data.data_dir`` becomes ``$GTL_DATA_DIR``.

    Raises:
      ConfigError: one line naming what is wrong (unknown config, variant, field, flag or
        an unparsable value).
      SystemExit(0): after printing ``--help``.
    """
    from absl import flags  # noqa: PLC0415 (only the command line needs absl)
    from ml_collections import config_flags  # noqa: PLC0415

    argv = list(argv)
    found = _config_arg(argv)
    spec = DEFAULT_CONFIG if found is None else found[1]
    c = load_config(spec)  # one-line errors for an unknown config or variant
    if "--help" in argv or "-h" in argv or "--helpfull" in argv:
        print(help_text(prog, description, spec, c, [*own]))
        raise SystemExit(0)
    known = flatten(c.to_dict())
    for path in _override_paths(argv):
        if any(k.startswith(f"{path}.") for k in known):
            raise ConfigError(
                f"config field {path} is a section: set its fields, "
                f"--config.{path}.FIELD=VALUE"
            )
        if path not in known:
            close = difflib.get_close_matches(path, list(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown config field {path}{hint}")
    # --config first (config_flags requires it before its overrides), as a resolved path.
    if found is not None:
        del argv[found[0] : found[0] + (1 if "=" in argv[found[0]] else 2)]
    argv = [prog, f"--config={resolve_config(spec)}", *argv]

    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=values, sys_argv=argv
    )
    for f in own:
        define = flags.DEFINE_bool if f.kind == "bool" else flags.DEFINE_string
        define(f.name, f.default, f.help, flag_values=values)
    try:
        rest = values(argv)
    except flags.Error as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected argument {rest[1]!r}")
    c = config.value
    if not c.data.data_dir:
        c.data.data_dir = os.environ.get("GTL_DATA_DIR", "")
    return CommandLine(
        config=c,
        spec=spec,
        overridden=frozenset(config_flags.get_override_values(values["config"])),
        flags={f.name: values[f.name].value for f in own},
    )


def command(body: Callable[[list[str]], int]) -> Callable[..., int]:
    """A command's ``main(argv=None)``: ``body(argv)`` (default ``sys.argv[1:]``) with the
    command line's one error handler: a bad config, dataset or file (``COMMAND_ERRORS``)
    is one line on stderr, ``error: <why>``, and exit status 2; a stop is
    ``stopping.command``'s one line."""

    @stopping.command
    @functools.wraps(body)
    def main(argv: Sequence[str] | None = None) -> int:
        try:
            return body(sys.argv[1:] if argv is None else list(argv))
        except COMMAND_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return main
