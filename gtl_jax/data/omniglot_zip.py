"""The official Omniglot release's zips: their member layout, read in memory into arrays.

This module owns the zip form of Omniglot (``images_background.zip``,
``images_evaluation.zip`` from github.com/brendenlake/omniglot): checking that a zip
follows ``<top>/<Alphabet>/characterNN/<id>_<drawer>.png``, ordering its characters by
id and its drawers 01..20, and decoding its 1-bit 105x105 PNGs with Pillow, without
extracting anything. It knows nothing of splits, sizes or caches (``omniglot.py`` does);
a shell module (I/O, no jit).
"""

from __future__ import annotations

import io
import pathlib
import re
import zipfile
from typing import NamedTuple

import numpy as np

from gtl_jax.data.pool import DataError

# Both forms of Omniglot hold 20 drawings (one per drawer) of every character, 105x105.
IMAGES_PER_CLASS = 20
ORIGINAL_SIZE = 105

# A PNG of the official zips: <top>/<Alphabet>/characterNN/<id>_<drawer>.png.
_MEMBER = re.compile(
    r"(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>character\d+)/"
    r"(?P<id>\d+)_(?P<drawer>\d+)\.png"
)
_LAYOUT = "<top>/<Alphabet>/characterNN/<id>_<drawer>.png"


class OfficialSet(NamedTuple):
    """One official zip as arrays, classes in character-id order.

    Attributes:
      images: bool[C, 20, 105, 105], ``True`` for white paper (as the arrays form);
        axis 1 is the drawer, 01..20.
      alphabets: the alphabet of each class (its folder name).
      character_ids: int64[C], the ``<id>`` of each class's file names (1-based over
        both zips: row c of the arrays form is id c + 1 or c + 965).
    """

    images: np.ndarray
    alphabets: list[str]
    character_ids: np.ndarray


def _is_archiver_litter(member: str) -> bool:
    """macOS archivers' extras (``__MACOSX/``, ``.DS_Store``, ``._*``): not data."""
    return member.startswith("__MACOSX/") or member.rsplit("/", 1)[-1].startswith(".")


def _index_official_zip(
    archive: zipfile.ZipFile, name: str
) -> list[tuple[int, str, list[zipfile.ZipInfo]]]:
    """``[(character id, alphabet, [member of drawer 1..20])]`` sorted by id.

    Raises:
      DataError: naming ``name`` and the member, on any departure from the layout.
    """
    characters: dict[int, tuple[str, str, dict[int, zipfile.ZipInfo]]] = {}
    tops = set()
    for info in archive.infolist():
        if info.is_dir() or _is_archiver_litter(info.filename):
            continue
        match = _MEMBER.fullmatch(info.filename)
        if match is None:
            raise DataError(
                f"{name}: member {info.filename!r} is not {_LAYOUT}; not the official "
                "Omniglot layout."
            )
        tops.add(match["top"])
        char_id, drawer = int(match["id"]), int(match["drawer"])
        place = (match["alphabet"], match["character"])
        alphabet, character, drawers = characters.setdefault(char_id, (*place, {}))
        if (alphabet, character) != place or drawer in drawers:
            raise DataError(
                f"{name}: member {info.filename!r} repeats character id {char_id} "
                f"(drawer {drawer}) of {alphabet}/{character}."
            )
        drawers[drawer] = info
    if len(tops) > 1:
        raise DataError(f"{name}: several top folders {sorted(tops)}; expected one.")
    if not characters:
        raise DataError(f"{name}: no PNG in {_LAYOUT}; not an Omniglot zip.")
    index = []
    counts: dict[str, int] = {}
    for char_id in sorted(characters):
        alphabet, character, drawers = characters[char_id]
        if sorted(drawers) != list(range(1, IMAGES_PER_CLASS + 1)):
            raise DataError(
                f"{name}: {alphabet}/{character} has drawers {sorted(drawers)}; "
                f"expected 1..{IMAGES_PER_CLASS}."
            )
        # Ids run through each alphabet's characters in order; the class names of the
        # arrays form (class_names) count them the same way.
        counts[alphabet] = counts.get(alphabet, 0) + 1
        if character != f"character{counts[alphabet]:02d}":
            raise DataError(
                f"{name}: character id {char_id} is {alphabet}/{character}; expected "
                f"{alphabet}/character{counts[alphabet]:02d} (ids in character order)."
            )
        index.append((char_id, alphabet, [drawers[d] for d in sorted(drawers)]))
    return index


def _open_zip(path: pathlib.Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot be read as a zip file ({e}).") from e


def read_official_alphabets(path: pathlib.Path) -> list[str]:
    """The alphabet of each class of an official zip, in character-id order (no PNG
    is decoded)."""
    with _open_zip(path) as archive:
        return [alphabet for _, alphabet, _ in _index_official_zip(archive, str(path))]


def read_official_zip(path: pathlib.Path) -> OfficialSet:
    """Reads an official Omniglot zip (in memory, no extraction).

    Classes are ordered by character id, images within a class by drawer: the order
    of the arrays form, whose pixels these are.

    Raises:
      DataError: naming the file (and member) if it is not a zip, departs from the
        layout, or holds a damaged PNG or one that is not 1-bit 105x105.
    """
    # Pillow (also a matplotlib dependency): imported by this reader only.
    from PIL import Image

    name = str(path)
    with _open_zip(path) as archive:
        index = _index_official_zip(archive, name)
        shape = (ORIGINAL_SIZE, ORIGINAL_SIZE)
        images = np.empty((len(index), IMAGES_PER_CLASS, *shape), dtype=bool)
        for row, (_, _, members) in enumerate(index):
            for drawer, info in enumerate(members):
                try:
                    with Image.open(io.BytesIO(archive.read(info))) as image:
                        mode, size = image.mode, image.size
                        pixels = np.asarray(image) if mode == "1" else None
                except Exception as e:  # BadZipFile (CRC), PIL's errors, zlib errors
                    raise DataError(
                        f"{name}: member {info.filename!r} cannot be read as a PNG "
                        f"({type(e).__name__}: {e})."
                    ) from e
                if pixels is None or size != shape:
                    raise DataError(
                        f"{name}: member {info.filename!r} is a {size[0]}x{size[1]} "
                        f"image of mode {mode!r}; expected 1-bit ('1') "
                        f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE}."
                    )
                images[row, drawer] = pixels
    return OfficialSet(
        images=images,
        alphabets=[alphabet for _, alphabet, _ in index],
        character_ids=np.array([char_id for char_id, _, _ in index], dtype=np.int64),
    )
