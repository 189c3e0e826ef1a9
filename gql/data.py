"""Price history: the index catalogue, the snapshot (`PriceStore`) and its data version, the normalized file format.

Where the data comes from (a directory of files, the built-in sample) is gql/sources.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# The ten indexes of the original dashboard, in its order.
DEFAULT_INDEXES: tuple[tuple[str, str], ...] = (
    ("000300", "CSI 300 (沪深300)"),
    ("000905", "CSI 500 (中证500)"),
    ("000922", "CSI Dividend (中证红利)"),
    ("000932", "CSI Consumer Staples (中证消费)"),
    ("000827", "CSI Environmental Protection (中证环保)"),
    ("000986", "CSI All Share Energy (全指能源)"),
    ("399971", "CSI Media (中证传媒)"),
    ("000985", "CSI All Share (中证全指)"),
    ("000991", "CSI All Share Health Care (全指医药)"),
    ("HSI", "Hang Seng Index (恒生指数)"),
)
SUFFIX = ".csv"


def code_key(code: str) -> str:
    """What two index codes (or their file names) are compared by: codes are one index whatever their case.

    Codes are stored as given and matched ignoring the case of ASCII letters; other text is matched as it
    is, since str.upper() maps lookalikes such as 'ſ' (long s) onto ASCII letters.
    """
    return code.upper() if code.isascii() else code


_DEFAULT_ORDER = {code_key(code): i for i, (code, _) in enumerate(DEFAULT_INDEXES)}


class DataError(ValueError):
    """Price data that cannot be used; the message names the file, the line and the problem."""


class SourceUnavailable(DataError):
    """The data source cannot be read now (a database that is unreachable or too slow): worth trying again."""


@dataclass(frozen=True)
class IndexMeta:
    code: str
    name: str
    source: str


@dataclass(frozen=True)
class IndexHistory:
    """One index: its metadata and daily closes (DatetimeIndex ascending and unique, float64 > 0)."""

    meta: IndexMeta
    closes: pd.Series

    @property
    def first_date(self) -> dt.date:
        return self.closes.index[0].date()

    @property
    def last_date(self) -> dt.date:
        return self.closes.index[-1].date()

    def has_close_between(self, start: dt.date, end: dt.date) -> bool:
        """Whether a close falls on a day from `start` to `end` (both included)."""
        first, last = self.first_date, self.last_date
        if end < first or start > last:
            return False
        # Clipped to the data first: a Timestamp cannot hold every date (1677-01-01 overflows).
        index = self.closes.index
        lo, hi = pd.Timestamp(max(start, first)), pd.Timestamp(min(end, last))
        return bool(index.searchsorted(hi, side="right") > index.searchsorted(lo, side="left"))

    @functools.cached_property
    def digest(self) -> bytes:
        """A digest of the metadata and every close (computed once: a reload reuses unchanged histories)."""
        digest = hashlib.sha256(json.dumps([self.meta.code, self.meta.name, self.meta.source]).encode())
        digest.update(self.closes.index.as_unit("ns").asi8.tobytes())
        digest.update(self.closes.to_numpy(dtype="float64").tobytes())
        return digest.digest()


class PriceStore:
    """The loaded price history of every index, in data-set order, with a version of its content.

    `store[code]` takes a code as stored (`codes`); `find` takes one in any case.
    """

    def __init__(self, histories: Iterable[IndexHistory], version: str | None = None) -> None:
        """`version`: the source's own (a database's); by default a digest of the content."""
        ordered = sorted(
            histories, key=lambda h: (_DEFAULT_ORDER.get(code_key(h.meta.code), len(_DEFAULT_ORDER)), h.meta.code)
        )
        if not ordered:
            raise DataError("no index data: the data set is empty")
        self._by_code = {h.meta.code: h for h in ordered}
        self._by_key: dict[str, IndexHistory] = {}
        for history in ordered:
            other = self._by_key.setdefault(code_key(history.meta.code), history)
            if other is history:
                continue
            if other.meta.code == history.meta.code:
                raise DataError(f"the data set holds index code {history.meta.code!r} twice")
            raise DataError(
                f"the data set holds index codes {other.meta.code!r} and {history.meta.code!r}, which are one code "
                "(codes are matched ignoring case); keep one of them"
            )
        self.codes: tuple[str, ...] = tuple(self._by_code)
        self.version = version or _content_version(ordered)
        self.first_date = min(h.first_date for h in ordered)
        self.last_date = max(h.last_date for h in ordered)

    def find(self, code: str) -> str | None:
        """The code as stored of the index `code` names in any case, or None when there is none."""
        history = self._by_key.get(code_key(code))
        return None if history is None else history.meta.code

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __getitem__(self, code: str) -> IndexHistory:
        return self._by_code[code]

    def __iter__(self):
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)


def make_closes(dates: Iterable, closes: Iterable[float]) -> pd.Series:
    """A closes series in the store's canonical form (the index named `date`, the values `close`)."""
    index = pd.DatetimeIndex(pd.to_datetime(list(dates) if not hasattr(dates, "dtype") else dates), name="date")
    return pd.Series(np.asarray(closes, dtype="float64"), index=index.as_unit("ns"), name="close")


def _content_version(histories: list[IndexHistory]) -> str:
    """The data version: a digest of the content only, so equal data has one version in every process."""
    digest = hashlib.sha256()
    for history in histories:
        digest.update(history.digest)
    return digest.hexdigest()[:16]


# --- the normalized file format -------------------------------------------------------------------
#
# One UTF-8 file per index, `<code>.csv`: a first line `# {"code": ..., "name": ..., "source": ...}`,
# then `date,close` and one row per trading day, oldest first. Metadata and prices live in one file
# so that an import replaces both with a single atomic rename.


def index_file(data_dir: Path, code: str) -> Path:
    return data_dir / f"{code}{SUFFIX}"


def make_data_dir(data_dir: Path) -> None:
    """Create the data directory (and its parents) unless it is there; DataError saying what is wrong with it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # with exist_ok: something that is not a directory has that name
        raise DataError(f"data directory {data_dir} is not a directory") from None
    except OSError as exc:
        raise DataError(f"data directory {data_dir} cannot be created: {exc.strerror}") from None


def index_entries(data_dir: Path) -> list[os.DirEntry]:
    """The index files in `data_dir`, by name; DataError when it cannot be listed or two of them are one code."""
    try:
        with os.scandir(data_dir) as scan:
            entries = sorted((e for e in scan if is_index_file(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"data directory {data_dir}: cannot list it: {exc.strerror}") from None
    seen: dict[str, str] = {}
    for entry in entries:
        other = seen.setdefault(code_key(entry.name), entry.name)
        if other != entry.name:
            raise DataError(
                f"data directory {data_dir} holds {other} and {entry.name}, which are one index (codes are matched "
                "ignoring case); remove one of them"
            )
    return entries


def find_index_file(data_dir: Path, code: str) -> Path | None:
    """The file of index `code` in `data_dir`, whatever the case of its name; None if there is none (or no directory)."""
    if not data_dir.is_dir():
        return None
    key = code_key(index_file(data_dir, code).name)
    return next((Path(e.path) for e in index_entries(data_dir) if code_key(e.name) == key), None)


def write_index_file(data_dir: Path, history: IndexHistory) -> Path:
    """Write atomically: a reader (or a crash) sees the old file or the new one, never a mix.

    The file of the same code in another case (T1.csv for code t1) is the one replaced, then renamed to
    the code as now given: at no moment does the directory hold both, or neither.
    """
    make_data_dir(data_dir)
    target = index_file(data_dir, history.meta.code)
    current = find_index_file(data_dir, history.meta.code) or target
    header = json.dumps(
        {"code": history.meta.code, "name": history.meta.name, "source": history.meta.source}, ensure_ascii=False
    )
    dates = history.closes.index.strftime("%Y-%m-%d")
    lines = [f"# {header}", "date,close"]
    lines += [f"{d},{c!r}" for d, c in zip(dates, history.closes.to_numpy(dtype="float64").tolist(), strict=True)]
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{history.meta.code}.", suffix=".tmp", dir=data_dir)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes the file private (0600); the server may run as another user than the import.
        os.chmod(tmp, 0o644)
        os.replace(tmp, current)
        if current != target:
            os.rename(current, target)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # e.g. no write permission, a full disk
            raise DataError(f"data directory {data_dir}: cannot write {target.name} in it: {exc.strerror}") from None
        raise
    return target


def read_index_file(path: Path) -> IndexHistory:
    """Read one normalized file, checking what the importer guarantees."""
    return read_stamped(path)[0]


FileStamp = tuple[int, int, int]  # size, mtime (ns), inode: a replaced or edited file has another one


def read_stamped(path: Path) -> tuple[IndexHistory, FileStamp]:
    """The history in one file, and the stamp of the very file that was read.

    The file is opened once: an import that replaces it meanwhile (a rename) cannot mix the header of
    one version with the rows of the next.
    """
    try:
        with path.open("rb") as src:
            stat = os.fstat(src.fileno())
            content = src.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    stamp = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); use `python -m gql import` to convert a CSV") from None
    first, _, rest = text.partition("\n")
    if not first.startswith("# "):
        raise DataError(f"{path}, line 1: not a normalized index file (expected a '# {{...}}' header); "
                        "use `python -m gql import` to convert a CSV")
    try:
        header = json.loads(first[2:])
        meta = IndexMeta(code=str(header["code"]), name=str(header["name"]), source=str(header["source"]))
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}, line 1: header must be JSON with code, name and source") from None
    if code_key(path.name) != code_key(f"{meta.code}{SUFFIX}"):  # another case is the same code
        raise DataError(f"{path}: file name does not match its code {meta.code!r}")
    try:
        # Blank lines kept (as empty rows) so that row numbers stay line numbers.
        frame = pd.read_csv(io.StringIO(rest), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    if list(frame.columns) != ["date", "close"] or frame.empty:
        raise DataError(f"{path}, line 2: expected a 'date,close' header followed by at least one row")
    dates = pd.to_datetime(frame["date"], format="%Y-%m-%d", errors="coerce")
    closes = pd.to_numeric(frame["close"], errors="coerce").to_numpy(dtype="float64")
    bad = dates.isna().to_numpy() | ~(np.isfinite(closes) & (closes > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}, line {row + 3}: bad date or close {frame.iloc[row].tolist()}; "
                        "expected YYYY-MM-DD and a positive number")
    series = make_closes(dates, closes)
    steps = np.diff(series.index.asi8)
    if (steps <= 0).any():
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise DataError(f"{path}, line {row + 3}: date {frame['date'].iloc[row]} is not after the line before; "
                        "dates must be unique and in ascending order")
    return IndexHistory(meta, series), stamp


def is_index_file(name: str) -> bool:
    """Whether a file name in a data directory is an index file (hidden names are an import's temporary files)."""
    return name.endswith(SUFFIX) and not name.startswith(".")
