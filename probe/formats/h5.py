"""What every probe file shares: attribute encoding, and resumable, atomic HDF5 writing.

`ResumableH5` writes into `<name>.partial` beside the final file; each finished unit of work
(an image x sigma, a layer, ...) is a group marked `complete`. A killed probe leaves only the
partial file; rerunning skips the complete groups and, when all are done, renames the partial
onto the final name, so the final file is never half-written.

Attributes: nested values (dicts, lists of strings) are stored as JSON text and numeric lists
as arrays (`encode_attr`); `decode_attr` turns either back into plain Python values, so every
reader sees the same types.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from probe import seeding
from probe.errors import ProbeError


def encode_attr(value):
    """A Python value as an HDF5 attribute (JSON text for nested values, "" for None)."""
    if isinstance(value, dict | list | tuple) and not (
            isinstance(value, list | tuple) and value and
            all(isinstance(v, int | float) for v in value)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def decode_attr(value):
    """An HDF5 attribute as a plain Python value: JSON text parsed, numpy scalars and arrays
    turned into numbers and lists."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def attr_n(attrs) -> int | None:
    """The training-set size N a probe file names ("" or missing: unknown, a model trained
    elsewhere)."""
    n = decode_attr(attrs.get("n", ""))
    return None if n in ("", None) else int(n)


def decode_attrs(attrs, private: bool = True) -> dict:
    """Every attribute of an HDF5 object, decoded (`private=False` leaves out `_identity`)."""
    return {k: decode_attr(v) for k, v in attrs.items() if private or not k.startswith("_")}


def read_attrs(path: str | os.PathLike, private: bool = True) -> dict:
    """The root attributes of an HDF5 file, decoded."""
    with h5py.File(path, "r") as f:
        return decode_attrs(f.attrs, private)


def identity_text(identity: dict) -> str:
    """The `_identity` attribute of settings `identity`: it names the seeding scheme too, so a
    file drawn under another scheme never counts as the same work."""
    return json.dumps({**identity, "seeding": seeding.SCHEME}, sort_keys=True, default=str)


def up_to_date(path: str | os.PathLike, identity: dict) -> bool:
    """A finished file written with these settings (nothing to redo)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("_identity") == identity_text(identity)
    except OSError:
        return False


class ResumableH5:
    """`with ResumableH5(path, attrs, identity) as out:` ... `if out.done(key): continue` ...
    `g = out.begin(key)`; write datasets into g; `out.complete(g)`.

    `attrs` (provenance: run id, checkpoint hash, command, options) go on the root; a partial
    file written with another `identity` (the settings that change results; all of `attrs` when
    None) is discarded instead of resumed. The final rename happens when the block exits
    without an exception. `reopen=True` continues a finished file of the same identity (a probe
    that adds groups to it later, such as new pairs).
    """

    def __init__(self, path: str | os.PathLike, attrs: dict, identity: dict | None = None,
                 reopen: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = {k: encode_attr(v) for k, v in attrs.items()}
        self.attrs["seeding"] = seeding.SCHEME
        self.identity = identity_text(identity if identity is not None else attrs)
        self.reopen = reopen
        self.file: h5py.File | None = None

    def _same(self, path: Path) -> bool:
        try:
            with h5py.File(path, "r") as f:
                return f.attrs.get("_identity") == self.identity
        except OSError:  # killed mid-write so badly HDF5 cannot open it: start again
            return False

    def __enter__(self) -> ResumableH5:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists() and not self._same(self.partial):
            self.partial.unlink()
        if self.reopen and not self.partial.exists() and self.path.is_file() \
                and self._same(self.path):
            shutil.copyfile(self.path, self.partial)
        try:
            self.file = h5py.File(self.partial, "a")
        except OSError as exc:
            self._full(exc)
            raise
        try:
            self.file.attrs["_identity"] = self.identity
            for key, value in self.attrs.items():
                self.file.attrs[key] = value
        except OSError as exc:  # a full disk already: the same one line as later on
            self.__exit__(type(exc), exc, None)
            raise
        return self

    def _full(self, exc: BaseException | None) -> None:
        """On a full disk, remove the partial file (it would only keep the disk full; the final
        file, if any, is the previous complete one, untouched) and say so in one line."""
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self.partial.unlink(missing_ok=True)
            free = shutil.disk_usage(self.partial.parent).free
            raise ProbeError(f"no space left on device while writing {self.path}; "
                             f"{free / 1e6:.1f} MB free") from None

    def done(self, key: str) -> bool:
        return key in self.file and bool(self.file[key].attrs.get("complete", False))

    def begin(self, key: str) -> h5py.Group:
        if key in self.file:
            del self.file[key]
        return self.file.require_group(key)

    def complete(self, group: h5py.Group) -> None:
        group.attrs["complete"] = True
        self.file.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.file.close()
        except OSError as error:
            exc_type, exc = type(error), exc or error
        self._full(exc)
        if exc_type is None:
            os.replace(self.partial, self.path)
