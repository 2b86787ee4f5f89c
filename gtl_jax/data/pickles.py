"""Reading dataset pickles safely: only arrays and plain containers, errors naming the file.

This module owns unpickling the pickled sources (CIFAR-100's ``train``/``test``, the
MetaOptNet and miniImageNet split pickles): a restricted unpickler that builds nothing
but numpy arrays, lists and dicts (a data file cannot run code), Python 2 pickles read
with ``latin1``, and the key checks every split pickle needs. A shell module (I/O).
"""

from __future__ import annotations

import io
import pathlib
import pickle
from collections.abc import Sequence

from gtl_jax.data.pool import DataError


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and plain containers: a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "list"),
        ("__builtin__", "list"),
        # Bytes pickled by Python 3 at protocol 2 (e.g. re-saved caches).
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a dataset pickle holds only arrays, "
            "lists and dicts"
        )


def load_pickle(
    path: pathlib.Path | None, *, data: bytes | None = None, what: str = ""
):
    """Unpickles a dataset file (Python 2 pickles too: ``encoding="latin1"``).

    Dict keys that are ``bytes`` (Python 2 ``str``) become ``str``, so ``b'data'`` and
    ``'data'`` read alike.

    Args:
      path: the file (named in errors).
      data: the file's bytes, if already read (e.g. from an archive member).
      what: a description of the expected content, for the error message.

    Raises:
      DataError: naming the file if it is missing, truncated or not a data pickle.
    """
    name = str(path)
    try:
        if data is None:
            # Streamed from the file: a pickle of the real data is about a gigabyte.
            with open(path, "rb") as f:
                obj = _ArrayUnpickler(f, encoding="latin1").load()
        else:
            obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{name} is missing; expected {what}") from None
    except Exception as e:  # EOFError (truncated), UnpicklingError, ...
        raise DataError(
            f"{name} cannot be read as a pickle ({type(e).__name__}: {e}); the file is "
            f"truncated or not the expected format. Expected {what}."
        ) from e
    if isinstance(obj, dict):
        obj = {
            k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()
        }
    return obj


def load_split_pickle(
    path: pathlib.Path, keys: Sequence[str], *, what: str, files: str
) -> dict:
    """The dict of one split's pickle, holding ``keys``.

    Args:
      path: the file.
      keys: the keys it must hold.
      what: a description of the expected content, for errors.
      files: which set of three per-split files it belongs to, e.g. ``"MetaOptNet"``.

    Raises:
      DataError: naming the file if it is missing, unreadable or lacks a key.
    """
    if not path.is_file():
        raise DataError(
            f"{path} is missing (the {files} files come as three); expected {what}"
        )
    obj = load_pickle(path, what=what)
    require_keys(obj, keys, name=str(path), what=what)
    return obj


def require_keys(obj, keys: Sequence[str], *, name: str, what: str) -> None:
    """Raises DataError unless ``obj`` is a dict holding every key."""
    if not isinstance(obj, dict):
        raise DataError(f"{name} holds a {type(obj).__name__}; expected {what}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(
            f"{name} has no key(s) {missing} (found {sorted(map(str, obj))}); expected {what}"
        )
