"""Checkpoints (Orbax): the evolution state of a run, and learngene files.

The only module that touches Orbax. Two kinds of data:

- The evolution state, saved every generation by a ``CheckpointManager`` in
  ``<workdir>/checkpoints`` together with JSON metadata (the config), so a killed run resumes from
  its workdir. Restores go into templates from ``jax.eval_shape``.
- A *learngene file*: a directory with the arrays (Orbax) and ``metadata.json`` (architecture,
  r, k per layer, image shape, dataset, splits, generation, fitness, config, library version).
  ``load_learngene`` checks the arrays against the metadata before anything uses them.

Every Orbax call runs inside ``_orbax``: SIGINT and SIGTERM wait until it returns
(``gtl_jax.stopping.deferred``), and the event loops Orbax creates for it let their pending
tasks finish before they close (``_DrainingLoop``). Orbax runs each save or restore in a fresh
asyncio loop and closes it when its result is known; when one of many concurrent TensorStore
reads fails (a damaged checkpoint) the others are still running, and each of them, finishing,
called back into the closed loop and printed a "RuntimeError: Event loop is closed" traceback
after our one-line error. Loops created inside ``_orbax`` wait for them instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gtl_jax.learngene import Learngene, ViTSpec, spec_from_json
from gtl_jax.stopping import deferred

FORMAT = "gtl_jax.learngene/1"
LIBRARY_VERSION = "0.1.0"  # kept equal to gtl_jax.__version__ (a test checks)


class LearngeneFileError(ValueError):
    """A learngene file is missing, corrupt, or does not match its metadata or target."""


class CheckpointError(ValueError):
    """A checkpoint of the workdir cannot be restored; the message names its directory."""


# Seconds a closing loop waits for its pending tasks before it cancels them.
DRAIN_SECONDS = 60.0


class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that, closed with tasks still pending, first lets them finish (and
    cancels what is left after ``DRAIN_SECONDS``), as ``asyncio.run`` does on the way out."""

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = [t for t in asyncio.all_tasks(self) if not t.done()]
            if pending:
                _, late = self.run_until_complete(
                    asyncio.wait(pending, timeout=DRAIN_SECONDS)
                )
                for task in late:
                    task.cancel()
                if late:
                    self.run_until_complete(
                        asyncio.gather(*late, return_exceptions=True)
                    )
                for task in pending:  # their errors are the one already raised
                    if not task.cancelled():
                        task.exception()
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingLoop()


@contextlib.contextmanager
def _orbax() -> Iterator[None]:
    """Around every Orbax call: signals deferred, and Orbax's event loops drained on close."""
    with deferred():
        policy = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_DrainingPolicy())
        try:
            yield
        finally:
            asyncio.set_event_loop_policy(policy)


def state_manager(
    workdir: str | pathlib.Path, max_to_keep: int = 2
) -> ocp.CheckpointManager:
    """The manager of ``<workdir>/checkpoints``; keeps the last ``max_to_keep`` generations.

    Orbax writes each checkpoint into a temporary directory and renames it when complete, so
    a kill mid-save leaves the previous checkpoints intact; the partial directory it leaves is
    removed when the next run opens the workdir.
    """
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    with _orbax():
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )


def close_manager(manager: ocp.CheckpointManager) -> None:
    """Waits for the manager's saves and background work, and closes it."""
    with _orbax():
        manager.close()


def latest_step(workdir: str | pathlib.Path) -> int | None:
    """The last generation checkpointed in ``<workdir>/checkpoints`` (None if none), from the
    directory names alone: Orbax renames a save's temporary directory to the step's number
    only once the save is complete."""
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    return max(steps, default=None)


def save_state(
    manager: ocp.CheckpointManager, step: int, state: Any, meta: dict
) -> None:
    """Saves the state of generation ``step`` and waits until it is on disk.

    A SIGINT or SIGTERM during the save takes effect once it is on disk."""
    with _orbax():
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        manager.wait_until_finished()


def restore_state(
    manager: ocp.CheckpointManager, template: Any, shardings: Any = None
) -> tuple[Any, dict] | None:
    """The latest state restored into ``template``'s structure (None if there is none).

    Args:
      manager: from ``state_manager``.
      template: the state's structure, shapes and dtypes (e.g. ``jax.eval_shape`` of init).
      shardings: optional pytree of ``jax.sharding.Sharding`` like ``template``: where each
        array goes. A checkpoint written on N devices restores onto these M devices.

    Raises:
      CheckpointError: the latest checkpoint is damaged or does not fit ``template``.
    """
    step = manager.latest_step()
    if step is None:
        return None
    if shardings is None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    else:
        target = jax.tree.map(
            lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s),
            template,
            shardings,
        )
    try:
        with _orbax():
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
    except Exception as e:  # Orbax raises many types for damaged files; name the dir.
        path = pathlib.Path(manager.directory) / str(step)
        raise CheckpointError(
            f"cannot restore checkpoint {path}: {type(e).__name__}: {e}. Nothing was "
            "changed; move that directory away to resume from the previous checkpoint"
        ) from None
    return restored.state, restored.meta


def save_learngene(
    path: str | pathlib.Path, learngene: Learngene, metadata: dict[str, Any]
) -> pathlib.Path:
    """Writes a learngene file: ``path/arrays`` (Orbax) and ``path/metadata.json``.

    ``metadata`` must hold at least ``spec`` (``LearngeneSpec.to_json()``) and ``model``.
    The file is written whole into ``<path>.tmp`` and then renamed to ``path``, so a killed
    write never leaves a half-written file under ``path``; an older file at ``path`` is moved
    to ``<path>.old`` for the instant of the swap and then removed. With several processes
    only process 0 writes (host arrays); the others return at once.
    """
    path = pathlib.Path(path).absolute()
    if jax.process_index() != 0:
        return path
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed write
    tmp.mkdir(parents=True)
    arrays = jax.tree.map(np.asarray, learngene)
    options = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    with (
        _orbax(),
        contextlib.closing(
            ocp.StandardCheckpointer(multiprocessing_options=options)
        ) as checkpointer,
    ):
        checkpointer.save(tmp / "arrays", arrays)
        checkpointer.wait_until_finished()
    meta = {
        "format": FORMAT,
        "library_version": LIBRARY_VERSION,
        "shapes": {
            n: {k: list(v.shape) for k, v in g.items()} for n, g in arrays.items()
        },
        **metadata,
    }
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def read_metadata(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    meta_path = path / "metadata.json"
    old = path.with_name(path.name + ".old")
    if not meta_path.is_file() and (old / "metadata.json").is_file():
        raise LearngeneFileError(
            f"{meta_path} not found: a write of {path} was interrupted; the previous "
            f"learngene file is {old} (rerun the evolve command on its workdir to rewrite "
            "it from the last checkpoint)"
        )
    if not meta_path.is_file():
        raise LearngeneFileError(
            f"{meta_path} not found: {path} is not a learngene file "
            "(a directory written by gtl_jax with arrays/ and metadata.json)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise LearngeneFileError(f"{meta_path} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise LearngeneFileError(
            f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}"
        )
    for field in ("spec", "model", "shapes"):
        if field not in meta:
            raise LearngeneFileError(
                f"{meta_path}: metadata field {field!r} is missing"
            )
    return meta


def _storage_reason(error: BaseException) -> str:
    """An Orbax/TensorStore error as one short line: without the ``[tensorstore_spec=
    '...']`` (about 1,200 characters of JSON) and source locations it appends."""
    text = re.sub(r"\s*\[tensorstore_spec='.*?'\]", "", str(error), flags=re.S)
    text = re.sub(r"\s*\[source locations='.*?'\]", "", text, flags=re.S)
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def load_learngene(path: str | pathlib.Path) -> tuple[Learngene, dict[str, Any]]:
    """Reads a learngene file and checks its arrays against its metadata.

    Returns:
      ``(learngene, metadata)``; ``metadata["spec"]`` rebuilds with
      ``gtl_jax.learngene.spec_from_json``.
    """
    path = pathlib.Path(path).absolute()
    meta = read_metadata(path)
    spec = spec_from_json(meta["spec"])
    template = {
        name: {
            k: jax.ShapeDtypeStruct(tuple(shape), np.float32)
            for k, shape in gene.items()
        }
        for name, gene in meta["shapes"].items()
    }
    try:
        with _orbax(), contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
            learngene = checkpointer.restore(path / "arrays", template)
    except Exception as e:  # Orbax raises many types for damaged files; name the file.
        raise LearngeneFileError(
            f"cannot read the arrays of learngene file {path} (damaged or truncated): "
            f"{type(e).__name__}: {_storage_reason(e)}"
        ) from None
    problems = []
    # Orbax restores the shapes it finds: hold them against the metadata's.
    for name, gene in learngene.items():
        for k, x in gene.items():
            expected = tuple(meta["shapes"].get(name, {}).get(k, ()))
            if tuple(x.shape) != expected:
                problems.append(
                    f"{name}/{k}: the arrays hold shape {tuple(x.shape)}, the "
                    f"metadata says {expected}"
                )
    for t in spec.tensors() if isinstance(spec, ViTSpec) else ():
        gene = learngene.get(t.module, {})
        if t.leaf not in gene:
            problems.append(f"{t.module}/{t.leaf}: missing")
        elif any(k is not None and k != n for k, n in zip(t.block, gene[t.leaf].shape)):
            problems.append(
                f"{t.module}/{t.leaf}: shape {gene[t.leaf].shape} vs spec block {t.block}"
            )
    for layer in () if isinstance(spec, ViTSpec) else spec.layers:
        gene = learngene.get(layer.name)
        if gene is None:
            problems.append(f"{layer.name}: missing")
            continue
        kernel = gene["kernel"].shape
        if kernel[2:] != (layer.k_in, layer.k_out):
            problems.append(
                f"{layer.name}: kernel {kernel} vs spec k_in={layer.k_in} "
                f"k_out={layer.k_out}"
            )
        for k in ("scale", "bias", "mean", "var"):
            if gene[k].shape != (layer.k_out,):
                problems.append(
                    f"{layer.name}/{k}: shape {gene[k].shape} vs ({layer.k_out},)"
                )
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(learngene)):
        problems.append("non-finite values")
    if problems:
        raise LearngeneFileError(
            f"learngene file {path} does not match its metadata:\n  "
            + "\n  ".join(problems)
        )
    return learngene, meta


def save_network(path: str | pathlib.Path, variables: Any, metadata: dict) -> None:
    """Writes a trained network (``{"params", "batch_stats"}``) and its metadata.

    The arrays go to ``path/arrays`` first and ``metadata.json`` last, so a directory with
    ``metadata.json`` is complete (``load_network`` ignores one without it).
    """
    path = pathlib.Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    arrays = jax.tree.map(np.asarray, variables)
    with _orbax(), contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        checkpointer.save(path / "arrays", arrays, force=True)
        checkpointer.wait_until_finished()
    (path / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))


def load_network(path: str | pathlib.Path, template: Any) -> tuple[Any, dict] | None:
    """The network saved at ``path`` restored into ``template``'s structure, or None."""
    path = pathlib.Path(path).absolute()
    if not (path / "metadata.json").is_file():
        return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        with _orbax(), contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
            variables = checkpointer.restore(path / "arrays", target)
    except Exception as e:  # Orbax raises many types for damaged files; name the file.
        raise LearngeneFileError(
            f"cannot read the saved network {path}: {type(e).__name__}: {e}; delete "
            "the directory to retrain it"
        ) from None
    return variables, json.loads((path / "metadata.json").read_text())
