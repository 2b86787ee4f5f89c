"""The one progress-bar helper: ``--quiet`` silences every bar (downloads included), and a
bar writing to a file (not a terminal) redraws at most every ``LOG_INTERVAL_S`` seconds."""

from __future__ import annotations

import hashlib
import io

from gtl_jax import progress
from gtl_jax.data import files
from gtl_jax.progress import progress_bar


def draws(text: str) -> int:
    return text.count("\r")


def test_a_bar_in_a_log_file_is_drawn_first_and_last_only():
    log = io.StringIO()  # not a terminal
    with progress_bar(total=1000, desc="work", file=log) as bar:
        for i in range(1000):
            bar.update()
            bar.set_postfix_str(f"i={i}")  # a forced redraw on a terminal
            bar.refresh()
    text = log.getvalue()
    assert "0/1000" in text and "1000/1000" in text and "i=999" in text
    assert draws(text) <= 3, repr(text)  # start, end (and its clearing)
    assert len(text) < 400


def test_a_terminal_bar_keeps_tqdms_defaults(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(log, "isatty", lambda: True, raising=False)
    with progress_bar(total=10, file=log) as bar:
        assert bar.mininterval == 0.1


def test_silenced_disables_every_bar_and_restores():
    log = io.StringIO()
    with progress.silenced(True):
        assert progress.is_silenced()
        with progress.silenced(False):  # an inner run without quiet keeps it silent
            assert progress.is_silenced()
        with progress_bar(total=3, file=log) as bar:
            bar.update(3)
    assert not progress.is_silenced()
    assert log.getvalue() == ""


def test_honours_quiet_uses_the_runs_argument_and_default():
    seen = []

    @progress.honours_quiet
    def run(x, *, quiet: bool = True):
        seen.append((x, quiet, progress.is_silenced()))

    run(1)
    run(2, quiet=False)
    run(3, quiet=True)
    assert seen == [(1, True, True), (2, False, False), (3, True, True)]
    assert not progress.is_silenced()


def test_quiet_silences_the_download_bar(tmp_path, capsys):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 100_000)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    files.download(source.as_uri(), tmp_path / "loud.bin", md5=md5)
    assert "downloading loud.bin" in capsys.readouterr().err
    with progress.silenced():
        files.download(source.as_uri(), tmp_path / "quiet.bin", md5=md5)
    assert capsys.readouterr().err == ""
    assert (tmp_path / "quiet.bin").read_bytes() == source.read_bytes()
