"""Stopping the way users expect (issue 15, item 3): Ctrl-C (SIGINT) or SIGTERM at any phase
ends with one line on stderr saying what is saved and how to go on, exit status 130 or 143,
no traceback (worker processes included), and the rerun ends like an uninterrupted run.

Every command runs in a subprocess of its own session, so a SIGINT can go to its whole process
group as a terminal's Ctrl-C does; the tests watch the workdir to know the phase. Also: the
"Event loop is closed" tracebacks Orbax's background work printed after a failed restore.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from conftest import ROOT

from gtl_jax import checkpoint, distributed, stopping, study
from gtl_jax.checkpoint import load_learngene

SMOKE = ["--config=configs/omniglot.py:smoke"]
TIMEOUT = 300  # seconds for one process
RESUME = "run the same command again"


class Command:
    """``python -m <module>`` on the smoke config in a process group of its own (as a
    terminal's foreground job), its stderr collected as it comes (``err``)."""

    def __init__(self, module: str, workdir: pathlib.Path, *flags: str, quiet=True):
        argv = [*SMOKE, *(["--quiet"] if quiet else []), "--workdir", str(workdir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv, *flags],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 65536):
            self._chunks.append(chunk)

    @property
    def err(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=30)
        self.proc.stderr.close()
        return code, self.err


def run_to_end(module: str, workdir: pathlib.Path, *flags: str) -> None:
    code, err = Command(module, workdir, *flags).wait()
    assert code == 0, err[-3000:]


def interrupt(
    command: Command, when, sig, *, group: bool, delay: float = 0.0
) -> tuple[int, str]:
    """Sends ``sig`` once ``when()`` is true (to the process group with ``group``, as Ctrl-C
    at a terminal does; else to the main process only, as ``kill PID`` does); returns the
    exit status and stderr. Fails if the command ends first."""
    proc = command.proc
    deadline = time.monotonic() + TIMEOUT
    while not when():
        assert proc.poll() is None, f"ended before the signal: {command.err[-3000:]}"
        assert time.monotonic() < deadline, "the phase never came"
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, f"ended before the signal: {command.err[-3000:]}"
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return command.wait()


def group_processes(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group, from /proc."""
    live = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(stat.parent.name)
    return live


def assert_one_line(err: str, pattern: str) -> None:
    """Apart from progress bars (tqdm's, without --quiet), stderr is the one line."""
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
    text = [
        part
        for line in err.split("\n")
        for part in line.split("\r")
        if part.strip() and "%|" not in part
    ]
    assert len(text) == 1, err[-3000:]
    assert re.fullmatch(f"interrupted: {pattern}", text[0]), text[0]
    assert err.rstrip("\n").endswith(text[0])  # the last line, after the bars


def first_metrics(workdir):
    path = workdir / "metrics.jsonl"
    return lambda: path.exists() and bool(path.read_text().strip())


def assert_same_run(workdir, reference) -> None:
    """The same table, learngene and metrics (but seconds) as the uninterrupted run."""
    assert (workdir / "results.md").read_text() == (
        reference / "results.md"
    ).read_text()
    resumed, meta = load_learngene(workdir / "learngene")
    expected, _ = load_learngene(reference / "learngene")
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)

    def metrics(w):
        rows = [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if k != "seconds"} for m in rows]

    assert metrics(workdir) == metrics(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted smoke run (one process: the smoke config's workers = 1)."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    run_to_end("gtl_jax.evolve", workdir)
    return workdir


# --------------------------------------------------------------------------- evolve


@pytest.mark.slow
def test_sigint_during_the_evolution_then_the_rerun_resumes(reference, tmp_path):
    workdir = tmp_path / "w"
    command = Command("gtl_jax.evolve", workdir)
    code, err = interrupt(command, first_metrics(workdir), signal.SIGINT, group=True)
    assert code == 130
    assert_one_line(
        err,
        f"generation 1 of 2 is checkpointed in {re.escape(str(workdir))}; "
        f"{RESUME} to resume",
    )
    assert not group_processes(command.proc.pid)
    run_to_end("gtl_jax.evolve", workdir)
    assert_same_run(workdir, reference)


def descendants_running(command: Command, workdir: pathlib.Path):
    """The final table has begun: the learngene file is written and the descendants' progress
    bar is out (without --quiet)."""
    written = workdir / "learngene" / "metadata.json"
    return lambda: written.exists() and "descendants:" in command.err


@pytest.mark.slow
def test_sigint_during_the_final_table_then_the_rerun_makes_it(reference, tmp_path):
    workdir = tmp_path / "w"
    command = Command("gtl_jax.evolve", workdir, quiet=False)
    running = descendants_running(command, workdir)
    code, err = interrupt(command, running, signal.SIGINT, group=True, delay=0.3)
    assert code == 130
    assert_one_line(
        err,
        rf"the evolution is done \(generation 2 of 2 checkpointed, learngene file "
        rf"{re.escape(str(workdir / 'learngene'))}\) but the final table is not; "
        f"{RESUME} to make it",
    )
    assert not (workdir / "results.md").exists()
    run_to_end("gtl_jax.evolve", workdir)
    assert_same_run(workdir, reference)


@pytest.mark.slow
def test_worker_processes_stop_without_a_word(tmp_path):
    """Two worker processes: SIGTERM to the main process alone (``kill PID``) during the
    evolution, then Ctrl-C to the whole group during the final table. The workers ignore
    SIGINT and are shut down by the main process; none is left."""
    workdir = tmp_path / "w"
    command = Command("gtl_jax.evolve", workdir, "--config.execution.workers=2")
    code, err = interrupt(command, first_metrics(workdir), signal.SIGTERM, group=False)
    assert code == 143
    assert_one_line(err, f"generation 1 of 2 is checkpointed in .*; {RESUME} to resume")
    time.sleep(1.0)
    assert not group_processes(command.proc.pid)

    command = Command(
        "gtl_jax.evolve", workdir, "--config.execution.workers=2", quiet=False
    )
    running = descendants_running(command, workdir)
    code, err = interrupt(command, running, signal.SIGINT, group=True, delay=2.0)
    assert code == 130
    assert err.startswith(f"resuming {workdir} after generation 1")
    assert_one_line(
        err.split("\n", 1)[1], f"the evolution is done .* {RESUME} to make it"
    )
    time.sleep(1.0)
    assert not group_processes(command.proc.pid)


@pytest.mark.slow
def test_joined_processes_stop_with_one_line_and_resume(tmp_path):
    """``--config.execution.processes=2``: SIGTERM to the launcher alone (``kill PID``)
    during the evolution ends both joined processes together after a generation's
    checkpoint, with one line; the same command then resumes it to the end. (Before the
    processes agreed on when to stop, one unwound while the other waited in a collective,
    and the command hung.)"""
    workdir = tmp_path / "w"
    joined = "--config.execution.processes=2"
    command = Command("gtl_jax.evolve", workdir, joined)
    code, err = interrupt(command, first_metrics(workdir), signal.SIGTERM, group=False)
    assert code == 143
    # The signal arrives during generation 1's checkpoint or generation 2.
    assert_one_line(err, f"generation [12] of 2 is checkpointed in .*; {RESUME} to .*")
    done = int(re.search(r"generation (\d) of 2", err).group(1))
    time.sleep(1.0)
    assert not group_processes(command.proc.pid)
    code, err = Command("gtl_jax.evolve", workdir, joined, quiet=False).wait()
    assert code == 0, err[-3000:]
    assert err.startswith(f"resuming {workdir} after generation {done}")
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["generation"] for row in rows] == [1, 2]


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (SigCgt in /proc/<pid>/status)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
    return bool(caught >> (sig - 1) & 1)


@pytest.mark.skipif(
    not pathlib.Path("/proc/self/status").exists(), reason="Linux /proc"
)
@pytest.mark.slow
def test_a_stop_while_the_command_imports_its_modules(tmp_path):
    """The package imports gtl_jax.stopping first: under ``python -m gtl_jax.<command>`` a
    signal while the rest (JAX, Orbax: a second or more) imports is one line too."""
    command = Command("gtl_jax.evolve", tmp_path / "w")
    code, err = interrupt(
        command,
        lambda: _catches(command.proc.pid, signal.SIGTERM),
        signal.SIGTERM,
        group=False,
    )
    assert code == 143
    assert_one_line(
        err, f"while starting, before anything was written; {RESUME} to start"
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_error_without_event_loop_tracebacks(
    reference, tmp_path
):
    """Orbax reads the arrays of a checkpoint concurrently; when the first read failed it
    closed its event loop while the others ran, and each of them printed "RuntimeError:
    Event loop is closed" (checkpoint._DrainingLoop)."""
    workdir = shutil.copytree(reference, tmp_path / "w")
    manifests = list((workdir / "checkpoints" / "2").rglob("manifest.ocdbt"))
    for manifest in manifests:  # cut to a third: every array's read fails
        manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 3])
    assert manifests
    code, err = Command("gtl_jax.evolve", workdir).wait()
    assert code == 2
    assert "Event loop" not in err and "Traceback" not in err, err[-3000:]
    assert err.startswith(
        f"error: cannot restore checkpoint {workdir / 'checkpoints' / '2'}"
    )


# --------------------------------------------------------------------------- inherit, study


@pytest.mark.slow
def test_sigint_during_inherit_keeps_the_pretrained_network(reference, tmp_path):
    workdir = tmp_path / "inherit"
    flags = ("--learngene", str(reference / "learngene"))
    command = Command("gtl_jax.inherit", workdir, *flags, quiet=False)

    def descendants_running():  # the pretrained network is cached, its descendants run
        cached = any(workdir.glob("pretrained/*/metadata.json"))
        return cached and "descendants:" in command.err

    code, err = interrupt(
        command, descendants_running, signal.SIGINT, group=True, delay=0.3
    )
    assert code == 130
    assert_one_line(
        err,
        rf"1 pretrained network\(s\) cached in {re.escape(str(workdir / 'pretrained'))} "
        rf"\(not trained again\); results are written once every descendant has run: "
        f"{RESUME} to run them",
    )
    (network,) = workdir.glob("pretrained/*/metadata.json")
    before = network.stat().st_mtime_ns
    run_to_end("gtl_jax.inherit", workdir, *flags)
    assert (
        network.stat().st_mtime_ns == before
    )  # read from the cache, not trained again
    assert (workdir / "results.md").exists()


@pytest.mark.skipif(
    not hasattr(study.main, "__wrapped__"),
    reason="gtl_jax.study.main is not yet decorated with @stopping.command",
)
@pytest.mark.slow
def test_sigint_during_the_study_says_what_is_kept(tmp_path):
    workdir = tmp_path / "study"
    command = Command("gtl_jax.study", workdir)
    metrics = workdir / "evolved" / "seed_0" / "metrics.jsonl"
    code, err = interrupt(
        command,
        lambda: metrics.exists() and metrics.read_text().strip(),
        signal.SIGINT,
        group=True,
    )
    assert code == 130
    assert_one_line(
        err,
        rf"kept in {re.escape(str(workdir))}: evolved/seed_0 at generation [12] of 2.*; "
        f"{RESUME} to resume",
    )


# --------------------------------------------------------------------------- the pieces


def test_signals_inside_a_deferred_block_arrive_when_it_ends():
    got = []
    previous = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    try:
        with stopping.deferred():
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.01)
            assert got == []  # held
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_command_reports_one_line_and_the_exit_code(capsys):
    @stopping.command
    def main(sig):
        stopping.describe(lambda: "what is saved; how to go on")
        with stopping.deferred():  # a checkpoint save: the stop waits for its end
            signal.raise_signal(sig)
        raise AssertionError("not stopped")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(signal.SIGTERM) == 143
    assert main(signal.SIGINT) == 130
    assert capsys.readouterr().err == 2 * "interrupted: what is saved; how to go on\n"
    # The handlers are restored to what they were (in a plain process: SIGINT raises
    # KeyboardInterrupt again).
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_stop_inside_a_gc_callback_is_not_lost(capsys):
    """Python may run the handler inside a garbage-collector callback (JAX has one), where
    the exception cannot propagate ("Exception ignored in ..."): the stop was lost and the
    run went on. The signal is delivered again and stops the command."""
    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(phase)
            signal.raise_signal(signal.SIGINT)  # the handler runs here, in the callback

    @stopping.command
    def main():
        gc.callbacks.append(callback)
        try:
            gc.collect()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the signal again, in ordinary code
                time.sleep(0.01)
        finally:
            gc.callbacks.remove(callback)
        return 0

    assert main() == 130 and fired
    err = capsys.readouterr().err
    assert err == f"interrupted: nothing was written; {RESUME} to start\n"


@pytest.mark.slow
def test_worker_pool_ignores_sigint_and_is_terminated_on_an_exception():
    with distributed.worker_pool(2, int) as (pool, _):
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt), distributed.worker_pool(2, int) as (pool, _):
        futures = [pool.submit(time.sleep, 600) for _ in range(2)]
        while not all(f.running() for f in futures):
            time.sleep(0.05)
        workers = list(pool._processes.values())
        raise KeyboardInterrupt
    assert time.monotonic() - t < 60  # the running jobs were not waited for
    assert not any(p.is_alive() for p in workers)


@pytest.mark.parametrize("inside", [True, False], ids=["orbax loop", "plain loop"])
def test_orbax_loops_let_pending_work_finish_before_they_close(inside):
    """As TensorStore does: a thread finishes work for a task of the loop and calls back into
    it after the loop's main coroutine has failed. A plain loop is closed by then."""
    errors = []

    async def slow(loop):
        future = loop.create_future()

        def finish():
            time.sleep(0.3)
            try:
                loop.call_soon_threadsafe(future.set_result, 1)
            except RuntimeError as e:
                errors.append(e)

        threading.Thread(target=finish).start()
        return await future

    async def fail():
        raise ValueError("a damaged file")

    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.gather(fail(), slow(loop))

    if inside:
        with checkpoint._orbax():
            loop = asyncio.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    with pytest.raises(ValueError, match="damaged"):
        loop.run_until_complete(main())
    loop.close()
    time.sleep(0.5)
    assert len(errors) == (0 if inside else 1)


def test_stop_messages_read_the_workdir(tmp_path):
    from gtl_jax.evolve import stop_message
    from gtl_jax.experiment import load_config

    c = load_config("omniglot:smoke")
    assert stop_message(c, tmp_path) == (
        f"no generation was checkpointed in {tmp_path} yet; {RESUME} to start the evolution"
    )
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-9").mkdir()  # a save cut short
    assert stop_message(c, tmp_path).startswith("generation 1 of 2 is checkpointed")
    (tmp_path / "checkpoints" / "2").mkdir()
    assert stop_message(c, tmp_path).endswith(
        "(it writes the learngene file and the final table)"
    )
    (tmp_path / "learngene").mkdir()
    meta = {"format": checkpoint.FORMAT, "spec": {}, "model": {}, "shapes": {}}
    (tmp_path / "learngene" / "metadata.json").write_text(
        json.dumps({**meta, "generation": 2})
    )
    assert stop_message(c, tmp_path).startswith("the evolution is done")
    assert study.stop_message(tmp_path, 2) == (
        f"kept in {tmp_path}: the evolution at generation 2 of 2; {RESUME} to resume"
    )
