"""The command line the three commands share: the config files (``load_config``), the
``--config`` flag and its overrides (absl flags with ``ml_collections.config_flags``), each
command's own flags, ``--help``, and the one error handler (``command``): an impossible
config, data or file is one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from gtl_jax import checkpoint, stopping
from gtl_jax.config import (
    SECTIONS,
    ConfigError,
    Experiment,
    flatten,
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


# --------------------------------------------------------------------------- config files

DEFAULT_CONFIG = "omniglot"


def config_dir() -> pathlib.Path:
    """The folder of the config files: the installed package ``gtl_jax.configs`` (the
    repository's top-level ``configs/``, mapped there by pyproject.toml and setup.py), or
    ``configs/`` next to this package's folder in a source tree that is not installed."""
    spec = importlib.util.find_spec("gtl_jax.configs")
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(next(iter(spec.submodule_search_locations)))
    return pathlib.Path(__file__).resolve().parents[1] / "configs"


def known_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("[a-z]*.py"))


def resolve_config(spec: str) -> str:
    """``NAME[:ARG]`` (a config of ``config_dir``) or ``PATH.py[:ARG]`` as
    ``/absolute/PATH.py[:ARG]``.

    A path that does not exist here but names a file of the installed configs
    (``configs/omniglot.py`` run from another folder) is that file.
    """
    name, sep, arg = spec.partition(":")
    if name.endswith(".py"):
        path = pathlib.Path(name)
        if not path.is_file():
            installed = config_dir() / path.name
            if path.parent.name != "configs" or not installed.is_file():
                raise ConfigError(f"config file {path} does not exist")
            path = installed
    else:
        known = known_configs()
        if name not in known:  # also refuses the private helpers (_paper) and "a.b"
            raise ConfigError(
                f"unknown config {name!r}; known configs: {', '.join(known)} (or a "
                "path to a .py)"
            )
        path = config_dir() / f"{name}.py"
    return f"{path.resolve()}{sep}{arg}"


def load_config(spec: str = DEFAULT_CONFIG) -> ml_collections.ConfigDict:
    """The config ``NAME[:ARG]`` or ``PATH.py[:ARG]`` (``get_config(ARG)`` of the file),
    e.g. ``load_config("omniglot:smoke")`` or ``load_config("configs/cifar_fs.py")``."""
    path, _, arg = resolve_config(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(
        f"gtl_jax_config_{pathlib.Path(path).stem}", path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config {spec!r} defines no get_config(arg) function")
    try:
        return module.get_config(arg or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def config_label(spec: str) -> str:
    """A short name of a config spec (``configs/omniglot.py:smoke`` -> ``omniglot_smoke``),
    for default workdirs."""
    name, _, arg = spec.partition(":")
    stem = pathlib.Path(name).stem if name.endswith(".py") else name
    return f"{stem}_{arg}" if arg else stem


def smoke_note(spec: str) -> str:
    """A line saying a smoke variant's numbers check the pipeline ('' for other configs)."""
    if spec.partition(":")[2] != "smoke":
        return ""
    return (
        "\n(smoke config: toy sizes that check the whole pipeline runs; these numbers "
        "measure nothing)\n"
    )


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


def field_help() -> dict[str, str]:
    """``{"section.field": help}``: each field's ``--help`` line, the ``help`` metadata
    beside the field in its dataclass (``Experiment.seed`` for ``seed``)."""
    found = {"seed": dataclasses.fields(Experiment)[0].metadata["help"]}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            found[f"{section}.{f.name}"] = f.metadata["help"]
    return found


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
    helps = field_help()
    for path, value in sorted(flatten(c.to_dict()).items(), key=_field_order):
        lines += [
            f"  --config.{path} (default: {value!r})",
            f"      {helps.get(path, path)}",
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
        env_dir = os.environ.get("GTL_DATA_DIR", "")
        if env_dir and not os.path.isdir(os.path.expanduser(env_dir)):
            raise ConfigError(
                f"GTL_DATA_DIR={env_dir!r} is not a folder "
                f"({'not a directory' if os.path.exists(env_dir) else 'it does not exist'})"
                ": set it to the folder that holds the datasets, or unset it"
            )
        c.data.data_dir = env_dir
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
