"""The experiment layer: what the three commands share, below all of them.

``python -m gtl_jax.evolve``, ``python -m gtl_jax.inherit`` and ``python -m gtl_jax.study``
are shells: each parses its command line and hands the config to its run. What they share
is in four modules, whose public names this module gathers (``from gtl_jax.experiment
import load_config``):

- ``gtl_jax.config``: the config as typed objects: the sections' dataclasses (each field's
  default and ``--help`` line beside it), ``Experiment`` (``experiment_of``,
  ``validate_config``).
- ``gtl_jax.build``: what a config builds: networks (``model_of``), recipes, class pools,
  fixed episodes, the evolution and its executor, the life worker processes; the JAX
  settings of the commands (``configure_jax``).
- ``gtl_jax.workdir``: a workdir's files (written atomically, metrics read back) and the
  config changes a rerun in the same workdir may make.
- ``gtl_jax.cli``: the config files (``load_config("omniglot:smoke")``), the command line
  (``parse_command_line``: absl flags with ``ml_collections.config_flags``,
  ``--config=configs/omniglot.py:smoke --config.seed=3``), ``--help``, and the one error
  handler of the commands (``command``).
"""

from gtl_jax.build import (
    CPU_XLA_FLAGS,
    CPU_XLA_FLAGS_JAXLIB,
    configure_jax,
    cpu_xla_flags,
    critic_recipe,
    data_options,
    descendant_recipe,
    eval_shots,
    fixed_episodes,
    life_workers,
    load_pools,
    make_evolution,
    make_executor,
    model_of,
    pool_stream,
    pretrain_config,
    require_splits,
    start_life_workers,
    worker_executor,
)
from gtl_jax.cli import (
    COMMAND_ERRORS,
    DEFAULT_CONFIG,
    PROGRESS_FORMAT,
    QUIET,
    CommandLine,
    Flag,
    command,
    config_dir,
    config_label,
    field_help,
    help_text,
    known_configs,
    load_config,
    parse_command_line,
    resolve_config,
    smoke_note,
)
from gtl_jax.config import (
    METHODS,
    SECTIONS,
    STUDY_METHODS,
    TRANSFER_DATASETS,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    ExecutionConfig,
    Experiment,
    ModelConfig,
    SuiteConfig,
    experiment_of,
    flatten,
    int_list,
    name_list,
    validate_config,
)
from gtl_jax.workdir import (
    FITNESS_KEYS,
    RESUMABLE_CHANGES,
    add_curve,
    config_changes,
    read_metrics,
    write_atomic,
)

__all__ = [
    "COMMAND_ERRORS",
    "CPU_XLA_FLAGS",
    "CPU_XLA_FLAGS_JAXLIB",
    "CommandLine",
    "ConfigError",
    "DEFAULT_CONFIG",
    "DataConfig",
    "EvaluationConfig",
    "ExecutionConfig",
    "Experiment",
    "FITNESS_KEYS",
    "Flag",
    "METHODS",
    "ModelConfig",
    "PROGRESS_FORMAT",
    "QUIET",
    "RESUMABLE_CHANGES",
    "SECTIONS",
    "STUDY_METHODS",
    "SuiteConfig",
    "TRANSFER_DATASETS",
    "add_curve",
    "command",
    "config_changes",
    "config_dir",
    "config_label",
    "configure_jax",
    "cpu_xla_flags",
    "critic_recipe",
    "data_options",
    "descendant_recipe",
    "eval_shots",
    "experiment_of",
    "field_help",
    "fixed_episodes",
    "flatten",
    "help_text",
    "int_list",
    "known_configs",
    "life_workers",
    "load_config",
    "load_pools",
    "make_evolution",
    "make_executor",
    "model_of",
    "name_list",
    "parse_command_line",
    "pool_stream",
    "pretrain_config",
    "read_metrics",
    "require_splits",
    "resolve_config",
    "smoke_note",
    "start_life_workers",
    "validate_config",
    "worker_executor",
    "write_atomic",
]
