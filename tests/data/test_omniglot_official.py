"""Omniglot from its official release: the zip reader (pixel for pixel against the arrays,
on the two real small official files), the downloader (against a local HTTP server on
127.0.0.1, never the real network) and the command line from a fresh machine."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import threading
import types
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from gtl_jax.data import DataError, files, omniglot
from gtl_jax.data.omniglot import (
    BACKGROUND_ZIP,
    EVALUATION_ZIP,
    OFFICIAL_URL,
    URL_ENV,
    find_omniglot_dir,
    load_omniglot,
    read_official_zip,
)
from gtl_jax.evolve import main

SMALL_DIR = ROOT.parent / "shared" / "data" / "omniglot_official"
SMALL = ("images_background_small1.zip", "images_background_small2.zip")
# Evaluation alphabets written as an official-format zip (the small files hold only
# background alphabets).
EVAL_ALPHABETS = ("Angelic", "Atemayar_Qelisayer", "Atlantean")
SMOKE = ["--config=configs/omniglot.py:smoke", "--quiet"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(files, "RETRY_WAIT_S", 0.0)


@pytest.fixture(scope="module")
def arrays():
    """The arrays form: ``{set: (bool images, alphabet per row, first id)}``."""
    real = find_omniglot_dir()
    assert (real / omniglot.BACKGROUND_FILE).is_file(), real
    alphabets = omniglot.read_alphabets(real)
    out = {}
    for name, path, first_id in (
        ("background", real / omniglot.BACKGROUND_FILE, 1),
        ("evaluation", real / omniglot.EVALUATION_FILE, 965),
    ):
        with np.load(path, allow_pickle=False) as data:
            out[name] = (data["images"], alphabets[name], first_id)
    return out


def png(paper: np.ndarray) -> bytes:
    """A 1-bit PNG of bool[105, 105] (True: white paper), as the official files."""
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="PNG")
    return buffer.getvalue()


def add_array_classes(archive, top: str, array_set, alphabets) -> None:
    """Writes the classes of ``alphabets`` from the arrays form in the official layout."""
    images, row_alphabets, first_id = array_set
    names = omniglot.class_names(row_alphabets)
    for row, alphabet in enumerate(row_alphabets):
        if alphabet not in alphabets:
            continue
        for drawer in range(20):
            member = f"{top}/{names[row]}/{row + first_id:04d}_{drawer + 1:02d}.png"
            archive.writestr(member, png(images[row, drawer]))


def add_small_members(archive, top: str, path, skip=()) -> set[str]:
    """Copies the PNGs of a real small zip (their bytes unchanged) under ``top``."""
    alphabets = set()
    with zipfile.ZipFile(path) as small:
        for info in small.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or parts[1] in skip:
                continue
            alphabets.add(parts[1])
            archive.writestr("/".join([top, *parts[1:]]), small.read(info))
    return alphabets


def zip_bytes(fill) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        fill(archive)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def evaluation_zip(arrays) -> bytes:
    """An official-format images_evaluation.zip of three alphabets, from the arrays."""
    return zip_bytes(
        lambda a: add_array_classes(
            a, "images_evaluation", arrays["evaluation"], EVAL_ALPHABETS
        )
    )


@pytest.fixture(scope="module")
def full_split_background_zip(arrays) -> bytes:
    """images_background.zip with the real small files' PNGs (both, Greek and Latin
    once) plus the 5 validation alphabets from the arrays, so the shipped split holds."""

    def fill(archive):
        seen = add_small_members(archive, "images_background", SMALL_DIR / SMALL[0])
        add_small_members(archive, "images_background", SMALL_DIR / SMALL[1], seen)
        add_array_classes(
            archive,
            "images_background",
            arrays["background"],
            omniglot.read_val_alphabets(),
        )

    return zip_bytes(fill)


@pytest.fixture(scope="module")
def array_pools(tmp_path_factory):
    """The pools of the real arrays form (the reference)."""
    return load_omniglot(
        find_omniglot_dir(), cache_dir=tmp_path_factory.mktemp("array_cache")
    )


@pytest.fixture
def digests(monkeypatch):
    """``digests(background_bytes, evaluation_bytes)`` makes them the expected files."""

    def set_digests(background: bytes, evaluation: bytes) -> None:
        monkeypatch.setitem(omniglot.OFFICIAL_MD5, BACKGROUND_ZIP, md5(background))
        monkeypatch.setitem(omniglot.OFFICIAL_MD5, EVALUATION_ZIP, md5(evaluation))

    return set_digests


@pytest.fixture
def val_split(tmp_path, monkeypatch):
    """``val_split(*alphabets)``: a split file naming these validation alphabets."""

    def set_split(*alphabets: str) -> None:
        path = tmp_path / "val_alphabets.txt"
        path.write_text("\n".join(alphabets) + "\n")
        monkeypatch.setattr(omniglot, "VAL_ALPHABETS_FILE", path)

    return set_split


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server (127.0.0.1, port 0) serving ``state.files`` by name;
    ``state.cut_to`` sends only that many bytes of each under the full Content-Length.
    ``GTL_OMNIGLOT_URL`` points at it."""
    state = types.SimpleNamespace(files={}, requests=[], cut_to=None)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path.lstrip("/"))
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if state.cut_to is None else data[: state.cut_to])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}/omniglot/python/"
    state.files_at = lambda **named: state.files.update(
        {f"omniglot/python/{k}": v for k, v in named.items()}
    )
    stopped = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            httpd.shutdown()
            httpd.server_close()

    state.stop = stop
    monkeypatch.setenv(URL_ENV, state.url)
    yield state
    stop()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


# --------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("small", SMALL)
def test_small_official_zips_are_the_arrays_pixels(small, arrays):
    images, row_alphabets, first_id = arrays["background"]
    official = read_official_zip(SMALL_DIR / small)
    rows = official.character_ids - first_id
    assert official.images.shape == (len(rows), 20, 105, 105)
    assert official.images.dtype == bool
    # Same classes (alphabet and name), same drawer order, same pixels (paper True).
    assert official.alphabets == [row_alphabets[r] for r in rows]
    names = omniglot.class_names(row_alphabets)
    assert omniglot.class_names(official.alphabets) == [names[r] for r in rows]
    np.testing.assert_array_equal(official.images, images[rows])
    # Rows in character-id order: whole alphabets, contiguous runs of ids.
    assert (np.diff(official.character_ids) > 0).all()
    assert 100 < len(rows) < 200


def test_official_pools_equal_the_array_pools(
    arrays, array_pools, evaluation_zip, digests, val_split, tmp_path
):
    """Both sources give the same uint8 pools: class names, image order, pixels."""
    background = (SMALL_DIR / SMALL[0]).read_bytes()
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / BACKGROUND_ZIP).write_bytes(background)  # its top folder is ..._small1
    (folder / EVALUATION_ZIP).write_bytes(evaluation_zip)
    digests(background, evaluation_zip)
    val_split("Greek")
    cache = tmp_path / "cache"
    pools = load_omniglot(folder, cache_dir=cache)

    reference = {}
    for pool in array_pools.values():
        for name, images in zip(pool.class_names, pool.images):
            reference[name] = images
    assert {n.split("/")[0] for n in pools["val"].class_names} == {"Greek"}
    assert {n.split("/")[0] for n in pools["train"].class_names} == {
        "Balinese",
        "Early_Aramaic",
        "Korean",
        "Latin",
    }
    assert {n.split("/")[0] for n in pools["test"].class_names} == set(EVAL_ALPHABETS)
    for split, pool in pools.items():
        assert pool.images.dtype == np.uint8 and pool.images.shape[1:] == (
            20,
            28,
            28,
            1,
        )
        expected = np.stack([reference[n] for n in pool.class_names])
        np.testing.assert_array_equal(pool.images, expected, err_msg=split)
    # The pools are cached under the zips' digests, and read back unchanged.
    (cache_file,) = cache.iterdir()
    assert omniglot.OFFICIAL_MD5[BACKGROUND_ZIP][:12] in cache_file.name
    again = load_omniglot(folder, cache_dir=cache)
    for split in pools:
        np.testing.assert_array_equal(again[split].images, pools[split].images)
        assert again[split].class_names == pools[split].class_names


def test_array_form_is_preferred_and_unchanged(tmp_path, array_pools):
    """A folder holding both forms reads the arrays (the shared data keeps working)."""
    real = find_omniglot_dir()
    assert omniglot.find_omniglot_source(real) == (omniglot.ARRAYS, real)
    both = tmp_path / "both"
    both.mkdir()
    for name in (omniglot.BACKGROUND_FILE, omniglot.EVALUATION_FILE, "alphabets.csv"):
        (both / name).symlink_to(real / name)
    (both / BACKGROUND_ZIP).write_bytes(b"not read")
    (both / EVALUATION_ZIP).write_bytes(b"not read")
    assert omniglot.find_omniglot_source(both)[0] == omniglot.ARRAYS


# --------------------------------------------------------------------------- bad zips


def test_corrupt_zip_names_the_file_and_member(tmp_path):
    not_zip = tmp_path / "images_background.zip"
    not_zip.write_bytes(b"<html>a proxy's error page</html>")
    with pytest.raises(DataError, match="cannot be read as a zip file") as info:
        read_official_zip(not_zip)
    assert str(not_zip) in one_line(str(info.value))

    raw = (SMALL_DIR / SMALL[0]).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(raw[: len(raw) // 2])  # loses the central directory
    with pytest.raises(DataError, match="cannot be read as a zip file"):
        read_official_zip(cut)

    # One PNG's compressed bytes damaged: the zip opens, that member does not read.
    with zipfile.ZipFile(SMALL_DIR / SMALL[0]) as archive:
        info = archive.getinfo("images_background_small1/Latin/character03/0685_07.png")
    damaged = bytearray(raw)
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged[data_start + info.compress_size // 2] ^= 0xFF
    bad_member = tmp_path / "bad_member.zip"
    bad_member.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=re.escape(info.filename)) as info_error:
        read_official_zip(bad_member)
    assert "cannot be read as a PNG" in one_line(str(info_error.value))


def test_zip_of_another_layout_or_image_format_is_refused(tmp_path):
    paper = np.ones((105, 105), bool)

    def write(name, members):
        path = tmp_path / name
        path.write_bytes(
            zip_bytes(lambda a: [a.writestr(m, data) for m, data in members.items()])
        )
        return path

    # macOS archivers' extras are skipped, anything else is refused.
    drawers = {
        f"t/Latin/character01/0683_{d:02d}.png": png(paper) for d in range(1, 21)
    }
    litter = {"__MACOSX/t/._Latin": b"x", "t/Latin/.DS_Store": b"x"}
    official = read_official_zip(write("litter.zip", {**drawers, **litter}))
    assert official.alphabets == ["Latin"] and official.images.all()
    loose = write("loose.zip", {"Latin/0683_01.png": png(paper)})
    with pytest.raises(DataError, match="not the official Omniglot layout"):
        read_official_zip(loose)
    drawers = {
        f"t/Latin/character01/0683_{d:02d}.png": png(paper) for d in range(1, 20)
    }
    with pytest.raises(DataError, match=r"drawers .*expected 1\.\.20"):
        read_official_zip(write("nineteen.zip", drawers))
    gray = io.BytesIO()
    Image.fromarray(np.zeros((105, 105), np.uint8)).save(gray, format="PNG")
    drawers["t/Latin/character01/0683_20.png"] = gray.getvalue()
    with pytest.raises(DataError, match=r"mode 'L'; expected 1-bit"):
        read_official_zip(write("gray.zip", drawers))


def test_corrupt_local_zip_fails_its_checksum(tmp_path, monkeypatch):
    """A damaged official zip in the data folder: refused by MD5, nothing cached."""
    folder = tmp_path / "data"
    folder.mkdir()
    raw = bytearray((SMALL_DIR / SMALL[0]).read_bytes())
    monkeypatch.setitem(omniglot.OFFICIAL_MD5, BACKGROUND_ZIP, md5(bytes(raw)))
    raw[len(raw) // 2] ^= 0xFF
    (folder / BACKGROUND_ZIP).write_bytes(bytes(raw))
    (folder / EVALUATION_ZIP).write_bytes(b"")
    with pytest.raises(DataError, match="md5 checksum mismatch") as info:
        load_omniglot(folder, cache_dir=tmp_path / "cache")
    message = one_line(str(info.value))
    assert str(folder / BACKGROUND_ZIP) in message
    assert omniglot.OFFICIAL_MD5[BACKGROUND_ZIP] in message and md5(raw) in message
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- download


def test_download_verifies_and_reads_the_pools(
    server, evaluation_zip, digests, val_split, tmp_path, monkeypatch
):
    """No folder given or found: the zips go to the default download folder."""
    background = (SMALL_DIR / SMALL[1]).read_bytes()
    server.files_at(**{BACKGROUND_ZIP: background, EVALUATION_ZIP: evaluation_zip})
    digests(background, evaluation_zip)
    val_split("Tagalog")
    monkeypatch.chdir(tmp_path)  # no ../shared from here
    monkeypatch.setattr(files, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("GTL_DATA_DIR", raising=False)
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found"):
        find_omniglot_dir()

    pools = load_omniglot()
    folder = tmp_path / "cache" / "data" / "omniglot"
    assert omniglot.download_dir() == folder
    assert leftovers(folder) == [BACKGROUND_ZIP, EVALUATION_ZIP]
    assert (folder / BACKGROUND_ZIP).read_bytes() == background
    assert (folder / EVALUATION_ZIP).read_bytes() == evaluation_zip
    assert server.requests == [
        "omniglot/python/" + n for n in (BACKGROUND_ZIP, EVALUATION_ZIP)
    ]
    assert {n.split("/")[0] for n in pools["val"].class_names} == {"Tagalog"}
    assert pools["train"].num_classes + pools["val"].num_classes == 156
    assert pools["test"].num_classes == 72
    # Found there next time: nothing is downloaded again.
    assert find_omniglot_dir() == folder
    load_omniglot()
    assert len(server.requests) == 2


def test_download_fetches_only_the_missing_zip(
    server, evaluation_zip, digests, val_split, tmp_path
):
    background = (SMALL_DIR / SMALL[0]).read_bytes()
    digests(background, evaluation_zip)
    val_split("Greek")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / BACKGROUND_ZIP).write_bytes(background)
    server.files_at(**{EVALUATION_ZIP: evaluation_zip})
    load_omniglot(folder, cache_dir=tmp_path / "cache")
    assert server.requests == ["omniglot/python/" + EVALUATION_ZIP]
    assert leftovers(folder) == [BACKGROUND_ZIP, EVALUATION_ZIP]


def test_file_url_mirror(evaluation_zip, digests, tmp_path, monkeypatch):
    """GTL_OMNIGLOT_URL may be a file:// folder (e.g. a shared disk)."""
    background = (SMALL_DIR / SMALL[0]).read_bytes()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / BACKGROUND_ZIP).write_bytes(background)
    (mirror / EVALUATION_ZIP).write_bytes(evaluation_zip)
    digests(background, evaluation_zip)
    monkeypatch.setenv(URL_ENV, mirror.as_uri())  # no trailing slash
    folder = tmp_path / "data"
    folder.mkdir()
    omniglot.download_official(folder)
    assert (folder / BACKGROUND_ZIP).read_bytes() == background
    assert leftovers(folder) == [BACKGROUND_ZIP, EVALUATION_ZIP]


def test_truncated_download_is_refused(server, evaluation_zip, digests, tmp_path):
    """The server sends half of each file under its full Content-Length."""
    background = (SMALL_DIR / SMALL[0]).read_bytes()
    server.files_at(**{BACKGROUND_ZIP: background, EVALUATION_ZIP: evaluation_zip})
    server.cut_to = len(background) // 2
    digests(background, evaluation_zip)
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        load_omniglot(folder, cache_dir=tmp_path / "cache")
    message = one_line(str(info.value))
    assert message.startswith(f"cannot download {server.url}{BACKGROUND_ZIP} (")
    assert f"cut after {len(background) // 2} of {len(background)} bytes" in message
    assert "tried 2 times" in message and str(folder) in message
    assert server.requests == ["omniglot/python/" + BACKGROUND_ZIP] * 2  # one retry
    assert leftovers(folder) == []  # nothing under the final name, no temp file


def test_cut_file_is_refused_by_its_checksum(server, evaluation_zip, digests, tmp_path):
    """A file cut at the source (its own Content-Length): the MD5 refuses it."""
    background = (SMALL_DIR / SMALL[0]).read_bytes()
    cut = background[: len(background) // 2]
    server.files_at(**{BACKGROUND_ZIP: cut, EVALUATION_ZIP: evaluation_zip})
    digests(background, evaluation_zip)
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError, match="md5 checksum mismatch") as info:
        load_omniglot(folder, cache_dir=tmp_path / "cache")
    assert f"expected {md5(background)}, got {md5(cut)}" in one_line(str(info.value))
    assert leftovers(folder) == []


def test_wrong_checksum_is_refused(server, evaluation_zip, digests, tmp_path):
    """Another file under the official name (small2 where small1 is expected)."""
    expected = (SMALL_DIR / SMALL[0]).read_bytes()
    served = (SMALL_DIR / SMALL[1]).read_bytes()
    server.files_at(**{BACKGROUND_ZIP: served, EVALUATION_ZIP: evaluation_zip})
    digests(expected, evaluation_zip)
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        load_omniglot(folder, cache_dir=tmp_path / "cache")
    message = one_line(str(info.value))
    assert message.startswith(
        f"{server.url}{BACKGROUND_ZIP}: md5 checksum mismatch: expected "
        f"{md5(expected)}, got {md5(served)}; the download was refused and not kept "
        f"as {folder / BACKGROUND_ZIP}."
    )
    assert leftovers(folder) == []


def test_real_official_digests_refuse_the_small_files(server, evaluation_zip, tmp_path):
    """Unpatched: the well-known MD5s are what a download is checked against."""
    served = (SMALL_DIR / SMALL[0]).read_bytes()
    server.files_at(**{BACKGROUND_ZIP: served, EVALUATION_ZIP: evaluation_zip})
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        omniglot.download_official(folder)
    assert f"expected 68d2efa1b9178cc56df9314c21c6e718, got {md5(served)}" in str(
        info.value
    )
    assert leftovers(folder) == []


def test_server_gone_names_url_files_and_folder(server, tmp_path):
    url = server.url
    server.files.clear()
    folder = tmp_path / "data"
    folder.mkdir()
    # A 404 first, then nothing listening at all.
    with pytest.raises(DataError, match="HTTP Error 404") as info:
        omniglot.download_official(folder)
    assert len(server.requests) == 2
    server.stop()
    with pytest.raises(DataError) as info:
        load_omniglot(folder, cache_dir=tmp_path / "cache")
    message = one_line(str(info.value))
    assert message.startswith(f"cannot download {url}{BACKGROUND_ZIP} (")
    assert "tried 2 times" in message
    for name in (BACKGROUND_ZIP, EVALUATION_ZIP, str(folder), OFFICIAL_URL, URL_ENV):
        assert name in message
    assert leftovers(folder) == []


def test_offline_names_the_official_url(tmp_path, monkeypatch):
    """No mirror set, no network (simulated): the official URL and the folder."""
    monkeypatch.delenv(URL_ENV, raising=False)
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        load_omniglot(folder, cache_dir=tmp_path / "cache")
    message = one_line(str(info.value))
    assert calls == [OFFICIAL_URL + BACKGROUND_ZIP] * 2
    assert message.startswith(
        f"cannot download {OFFICIAL_URL}{BACKGROUND_ZIP} ([Errno -3] Temporary failure "
        "in name resolution; tried 2 times). Put images_background.zip and "
        f"images_evaluation.zip (from {OFFICIAL_URL}) in {folder},"
    )


def test_explicit_missing_folder_is_not_created_or_downloaded_into(
    tmp_path, monkeypatch
):
    def no_network(*args, **kwargs):
        raise AssertionError("no download into a folder that does not exist")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    missing = tmp_path / "typo"
    with pytest.raises(DataError, match="it does not exist"):
        load_omniglot(missing, cache_dir=tmp_path / "cache")
    assert not missing.exists()


# --------------------------------------------------------------------------- command line


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """cwd outside the repo, GTL_DATA_DIR an empty folder, GTL_CACHE_DIR another."""
    home = tmp_path / "elsewhere"
    data = tmp_path / "data"
    for folder in (home, data):
        folder.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setattr(files, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("GTL_DATA_DIR", str(data))
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    return types.SimpleNamespace(data=data, workdir=tmp_path / "run")


def refused(argv, capsys) -> str:
    """As tests/test_hostile_inputs.py: exit code 2, one line ``error: ...`` on stderr
    (after the download's progress bar, if a download ran), no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    *progress, last = err.rstrip("\n").split("\n")
    assert all(line.startswith("\rdownloading ") for line in progress), err
    assert "Traceback" not in err and last.startswith("error: "), err
    return last


def test_cli_offline_is_one_line_naming_url_and_folder(
    fresh_machine, monkeypatch, capsys
):
    monkeypatch.delenv(URL_ENV, raising=False)

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = refused(SMOKE + ["--workdir", str(fresh_machine.workdir)], capsys)
    assert err.startswith(f"error: cannot download {OFFICIAL_URL}{BACKGROUND_ZIP} (")
    assert f"in {fresh_machine.data}," in err and EVALUATION_ZIP in err
    assert leftovers(fresh_machine.data) == []
    assert not fresh_machine.workdir.exists()


def test_cli_small_official_files_reach_the_split_check(
    fresh_machine, server, evaluation_zip, digests, capsys
):
    """The real small file as images_background.zip: downloaded, verified, read, and
    refused at the split check (it lacks the validation alphabets)."""
    background = (SMALL_DIR / SMALL[0]).read_bytes()
    server.files_at(**{BACKGROUND_ZIP: background, EVALUATION_ZIP: evaluation_zip})
    digests(background, evaluation_zip)
    err = refused(SMOKE + ["--workdir", str(fresh_machine.workdir)], capsys)
    assert "validation alphabets ['Alphabet_of_the_Magi', 'Bengali'" in err
    assert "are not background alphabets" in err
    assert leftovers(fresh_machine.data) == [BACKGROUND_ZIP, EVALUATION_ZIP]


@pytest.mark.slow
def test_cli_downloads_verifies_and_runs(
    fresh_machine, server, full_split_background_zip, evaluation_zip, digests, capsys
):
    server.files_at(
        **{BACKGROUND_ZIP: full_split_background_zip, EVALUATION_ZIP: evaluation_zip}
    )
    digests(full_split_background_zip, evaluation_zip)
    argv = SMOKE + [
        f"--workdir={fresh_machine.workdir}",
        "--config.evolution.generations=1",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "| learngene |" in captured.out
    assert "downloading" not in captured.err  # --quiet silences the download bar too
    assert (fresh_machine.workdir / "results.md").is_file()
    assert leftovers(fresh_machine.data) == [BACKGROUND_ZIP, EVALUATION_ZIP]
    assert len(server.requests) == 2


def test_a_killed_downloads_temp_file_is_removed_by_the_next(tmp_path):
    """A failure within the process removes its temp file; a killed process cannot, so
    the next download of the same file removes temp files untouched for 10 minutes
    (a live one, e.g. another process's, is kept)."""
    source = tmp_path / "source.zip"
    source.write_bytes(b"z" * 1000)
    folder = tmp_path / "data"
    folder.mkdir()
    stale = folder / f".{BACKGROUND_ZIP}.abc123.part"
    live = folder / f".{BACKGROUND_ZIP}.def456.part"
    other = folder / ".another.zip.ghi789.part"
    for part in (stale, live, other):
        part.write_bytes(b"partial")
    old = stale.stat().st_mtime - files.STALE_PART_S - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    files.download(source.as_uri(), folder / BACKGROUND_ZIP, md5=md5(b"z" * 1000))
    assert leftovers(folder) == sorted([BACKGROUND_ZIP, live.name, other.name])
