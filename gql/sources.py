"""Where the data comes from: a directory of normalized index files, or the built-in synthetic sample."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from gql.data import SUFFIX, DataError, FileStamp, IndexHistory, PriceStore, index_entries, is_index_file, read_stamped
from gql.sample import generate_sample


class Source(Protocol):
    """What the feed follows: files here, or a database (gql/db/source.py, which also has `follow`)."""

    store: PriceStore
    data_dir: Path | None

    @property
    def description(self) -> str: ...

    def changed(self) -> bool: ...

    def reload(self) -> PriceStore: ...


def load_directory(data_dir: Path) -> PriceStore:
    return PriceSource(data_dir).store


def _index_files(data_dir: Path) -> list[os.DirEntry]:
    if not data_dir.is_dir():
        if data_dir.exists():
            raise DataError(f"data directory {data_dir} is not a directory")
        raise DataError(f"data directory {data_dir} does not exist; create it with `python -m gql import`")
    entries = index_entries(data_dir)
    if not entries:
        raise DataError(f"data directory {data_dir} holds no index files ({SUFFIX}); "
                        "add some with `python -m gql import FILE --code CODE --name NAME`")
    return entries


def _stamp(entry: os.DirEntry) -> FileStamp | None:
    try:
        stat = entry.stat()
    except OSError:
        return None  # removed since it was listed
    return stat.st_size, stat.st_mtime_ns, entry.inode()


def load_store(data_dir: Path | None) -> PriceStore:
    """The configured data: the files in `data_dir`, or the built-in synthetic sample when it is None."""
    return PriceSource(data_dir).store


def directory_signature(data_dir: Path | None) -> tuple:
    """Cheap fingerprint (names, sizes, mtimes, inodes) that changes when any index file is replaced or edited."""
    if data_dir is None:
        return ()
    try:
        entries = sorted(os.scandir(data_dir), key=lambda e: e.name)
    except OSError:
        return ("missing",)
    return tuple((e.name, _stamp(e)) for e in entries if is_index_file(e.name))


class PriceSource:
    """The current PriceStore of a configuration, reloaded when the files under it change.

    A reload is all or nothing: one bad file and the whole data set stays as it was (DataError says
    which file and what is wrong). It reads only the files whose stamp changed; the others, and their
    digests, are reused.
    """

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self._files: dict[str, tuple[FileStamp, IndexHistory]] = {}
        self._tried = directory_signature(data_dir)
        self.store = self._load()

    @property
    def description(self) -> str:
        return "synthetic sample" if self.data_dir is None else str(self.data_dir)

    def changed(self) -> bool:
        """Whether the files differ from what the last reload (good or bad) saw."""
        return self.data_dir is not None and directory_signature(self.data_dir) != self._tried

    def reload(self) -> PriceStore:
        """Load the files again; on a bad file the previous data stays in use and DataError is raised."""
        self._tried = directory_signature(self.data_dir)
        self.store = self._load()
        return self.store

    def _load(self) -> PriceStore:
        if self.data_dir is None:
            return PriceStore(generate_sample())
        files: dict[str, tuple[FileStamp, IndexHistory]] = {}
        for entry in _index_files(self.data_dir):
            known = self._files.get(entry.name)
            if known is not None and known[0] == _stamp(entry):
                files[entry.name] = known
                continue
            history, stamp = read_stamped(Path(entry.path))
            files[entry.name] = (stamp, history)
        store = PriceStore(history for _, history in files.values())
        self._files = files
        return store
