"""Importing daily closes from a CSV in a real-world layout into the normalized data directory."""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gql.data import DataError, IndexHistory, IndexMeta, find_index_file, make_closes, read_index_file, write_index_file

# Header names the importer recognizes, in order of preference. They are matched after
# _normalized_name, so `Date`, ` DATE ` and `trade date` match `date` and `trade_date`.
DATE_COLUMNS: tuple[str, ...] = ("date", "candle_end_time", "trade_date", "datetime", "time", "日期", "交易日期")
# An adjusted close folds dividends into the price, which a price index must not do: use it only when
# the file has no plain close.
CLOSE_COLUMNS: tuple[str, ...] = ("close", "收盘", "收盘价", "closing price", "close price", "adj close")

# Date formats tried in this order; the first that reads every row wins. Every one of them has a
# single reading, so trying them in turn cannot pick a wrong date.
_UNAMBIGUOUS_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d",
    "%Y%m%d",
    "%Y.%m.%d",
    "%d.%m.%Y",
)
# Slashed dates with the year last are month-first in the US and day-first in most other places.
# Each pair is tried together: when both read every row and disagree, only the user can say which.
_SLASHED_PAIRS: tuple[tuple[str, str], ...] = (("%m/%d/%Y", "%d/%m/%Y"), ("%m/%d/%y", "%d/%m/%y"))
# A format that reads none of the first rows is not worth a pass over the whole column.
_SAMPLE_ROWS = 50

_DELIMITERS = (",", "\t", ";", "|")
_VALID_CODE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,19}")
# "1,234.5": a comma only between groups of three digits, so "12,5" (a decimal comma) is not taken for one.
_THOUSANDS = r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?"
_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote, and what it detected, so the caller can show the user both."""

    path: Path | None  # the file written (None: into a database)
    destination: str  # where it went, as the output says it: the file, or the database
    code: str
    name: str
    rows: int
    first_date: dt.date
    last_date: dt.date
    dropped_duplicates: int
    date_column: str
    close_column: str
    date_format: str
    # What the file of this code (in whatever case) held before: None for a new index, a DataError
    # when that file could not be read.
    replaced: IndexHistory | DataError | None = None


@dataclass(frozen=True)
class ParsedFile:
    closes: pd.Series
    dropped_duplicates: int
    date_column: str
    close_column: str
    date_format: str


def import_csv(
    path: Path,
    data_dir: Path,
    code: str,
    name: str,
    *,
    date_column: str | None = None,
    close_column: str | None = None,
    date_format: str | None = None,
) -> ImportReport:
    """Read a price CSV and write it as `<code>.csv` in `data_dir`; a failed import changes nothing there."""
    history, parsed = prepare_import(path, code, name, date_column=date_column, close_column=close_column, date_format=date_format)
    replaced = _current(data_dir, code)
    written = write_index_file(data_dir, history)
    return import_report(history, parsed, replaced, destination=str(written), path=written)


def prepare_import(
    path: Path, code: str, name: str, *, date_column: str | None = None, close_column: str | None = None, date_format: str | None = None,
) -> tuple[IndexHistory, ParsedFile]:
    """The index a CSV holds, read and checked whole (DataError saying what is wrong), before anything is written."""
    _check_code(path, code)
    if not name.strip():
        raise DataError(f"cannot import {path}: the index name is empty; give the name users should see")
    parsed = _parse_file(path, date_column=date_column, close_column=close_column, date_format=date_format)
    return IndexHistory(IndexMeta(code=code, name=name.strip(), source=f"imported from {path.name}"), parsed.closes), parsed


def import_report(
    history: IndexHistory, parsed: ParsedFile, replaced: IndexHistory | DataError | None, *, destination: str, path: Path | None = None,
) -> ImportReport:
    return ImportReport(
        path=path,
        destination=destination,
        code=history.meta.code,
        name=history.meta.name,
        rows=len(history.closes),
        first_date=history.first_date,
        last_date=history.last_date,
        dropped_duplicates=parsed.dropped_duplicates,
        date_column=parsed.date_column,
        close_column=parsed.close_column,
        date_format=parsed.date_format,
        replaced=replaced,
    )


def _current(data_dir: Path, code: str) -> IndexHistory | DataError | None:
    """What the data directory holds for `code` (in any case) before an import replaces it."""
    existing = find_index_file(data_dir, code)
    if existing is None:
        return None
    try:
        return read_index_file(existing)
    except DataError as exc:  # a broken file is still replaced: the import is how to mend it
        return exc


def parse_closes(
    path: Path,
    *,
    date_column: str | None = None,
    close_column: str | None = None,
    date_format: str | None = None,
) -> pd.Series:
    """The daily closes in a price CSV, in the store's canonical form, oldest first; DataError if unusable."""
    return _parse_file(path, date_column=date_column, close_column=close_column, date_format=date_format).closes


def _parse_file(
    path: Path, *, date_column: str | None, close_column: str | None, date_format: str | None
) -> ParsedFile:
    table = _read_table(path)
    date_name = _pick_column(path, table.columns, date_column, DATE_COLUMNS, "date", "--date-column")
    close_name = _pick_column(path, table.columns, close_column, CLOSE_COLUMNS, "close", "--close-column")
    if date_name == close_name:
        raise DataError(f"{path}, line 1: column {date_name!r} cannot be both the date and the close")

    lines = table.index.to_numpy()
    raw_dates = table[date_name].str.strip()
    raw_closes = table[close_name].str.strip()
    fmt, dates = _read_dates(path, raw_dates, lines, date_format)
    closes = _read_close_values(raw_closes)

    date_text = raw_dates.to_numpy(dtype=object)
    close_text = raw_closes.to_numpy(dtype=object)
    missing_date = date_text == ""
    missing_close = close_text == ""
    not_a_number = ~np.isfinite(closes) & ~missing_close
    _raise_first_problem(
        path,
        lines,
        [
            (missing_date, lambda i: "the date is empty"),
            (dates.isna().to_numpy() & ~missing_date,
             lambda i: f"cannot read date {date_text[i]!r} as {_readable(fmt)}{_format_hint(date_format)}"),
            (missing_close, lambda i: f"the close (column {close_name!r}) is empty"),
            (not_a_number, lambda i: f"close {close_text[i]!r} is not a number"),
            (np.isfinite(closes) & (closes <= 0), lambda i: f"close {close_text[i]!r} is not positive"),
        ],
    )
    series, dropped = _sorted_unique_closes(
        path, dates.to_numpy(dtype="datetime64[ns]"), closes, close_text, lines
    )
    return ParsedFile(series, dropped, date_name, close_name, fmt)


def _check_code(path: Path, code: str) -> None:
    # The code becomes a file name in the data directory; a leading dot would hide it from load_directory.
    if not _VALID_CODE.fullmatch(code):
        raise DataError(
            f"cannot import {path}: index code {code!r} is not valid; use 1-20 letters, digits, '.', '_' or '-', "
            "not starting with '.'"
        )


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_byte = exc.start
    # Chinese market software exports GBK; GB18030 is its superset. Only header names can contain
    # anything but ASCII, so a wrong guess here shows up as an unknown column, never as a wrong price.
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        line = data.count(b"\n", 0, bad_byte) + 1
        raise DataError(f"{path}, line {line}: the file is not UTF-8 text; save it as UTF-8 CSV") from None


def _read_table(path: Path) -> pd.DataFrame:
    """Every cell as stripped-left text, indexed by the line of the source file it came from."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}, line 1: the file is empty; expected a header line and one row per day")
    header = text.split("\n", 1)[0]
    delimiter = max(_DELIMITERS, key=header.count)  # ties go to the earlier, commoner delimiter
    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            # Blank lines stay as empty rows so that row positions keep matching the file's line numbers.
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        found = _FIELD_COUNT.search(str(exc))
        if found:
            expected, line, saw = found.groups()
            raise DataError(
                f"{path}, line {line}: {saw} fields but the header has {expected}; "
                f"check the quoting (a close like 1,234.5 must be quoted in a comma-separated file)"
            ) from None
        raise DataError(f"{path}: cannot read as CSV: {str(exc).strip()}") from None
    table = table.fillna("")  # a short row leaves its last fields missing
    table.index = pd.RangeIndex(2, len(table) + 2)  # the header is line 1
    blank = np.logical_and.reduce([table[c].str.strip().to_numpy() == "" for c in table.columns])
    table = table[~blank]
    if table.empty:
        raise DataError(f"{path}, line 1: the file has a header but no rows of prices")
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _normalized_name(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().casefold())


def _pick_column(
    path: Path, columns: pd.Index, explicit: str | None, candidates: tuple[str, ...], role: str, option: str
) -> str:
    found = ", ".join(repr(c) for c in columns)
    by_name: dict[str, list[str]] = {}
    for column in columns:
        by_name.setdefault(_normalized_name(column), []).append(column)
    if explicit is not None:
        if explicit.strip() in columns:
            return explicit.strip()
        matches = by_name.get(_normalized_name(explicit), [])
        if len(matches) == 1:
            return matches[0]
        raise DataError(f"{path}, line 1: there is no {role} column {explicit!r}; the columns are {found}")
    for candidate in candidates:
        matches = by_name.get(_normalized_name(candidate), [])
        if len(matches) > 1:
            raise DataError(
                f"{path}, line 1: columns {' and '.join(map(repr, matches))} could each be the {role}; "
                f"choose one with {option}"
            )
        if matches:
            return matches[0]
    tried = ", ".join(candidates)
    raise DataError(
        f"{path}, line 1: no {role} column; the columns are {found}; looked for {tried} "
        f"(any case); name the column with {option}"
    )


def _parse_dates(raw: pd.Series, fmt: str) -> pd.Series:
    parsed = pd.to_datetime(raw, format=fmt, errors="coerce")
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_localize(None)  # the exchange's local trading day
    return parsed.dt.normalize()  # a timestamped close still belongs to its day


def _read_dates(
    path: Path, raw: pd.Series, lines: np.ndarray, date_format: str | None
) -> tuple[str, pd.Series]:
    """The format and the dates it reads (NaT where it cannot), detected from the data unless given."""
    if date_format is not None:
        try:
            return date_format, _parse_dates(raw, date_format)
        except ValueError as exc:
            raise DataError(f"{path}: date format {date_format!r} is not usable: {exc}") from None

    present = raw[raw != ""]
    sample = present.iloc[:_SAMPLE_ROWS]
    best: tuple[int, str, pd.Series] | None = None

    def attempt(fmt: str) -> pd.Series | None:
        nonlocal best
        if _parse_dates(sample, fmt).isna().all():
            return None
        parsed = _parse_dates(raw, fmt)
        read = int(parsed[raw != ""].notna().sum())
        if best is None or read > best[0]:
            best = (read, fmt, parsed)
        return parsed if read == len(present) else None

    for fmt in _UNAMBIGUOUS_FORMATS:
        parsed = attempt(fmt)
        if parsed is not None:
            return fmt, parsed
    for month_first, day_first in _SLASHED_PAIRS:
        as_month_first, as_day_first = attempt(month_first), attempt(day_first)
        if as_month_first is not None and as_day_first is not None:
            differ = (as_month_first != as_day_first).to_numpy()
            if differ.any():
                i = int(np.flatnonzero(differ)[0])
                raise DataError(
                    f"{path}, line {lines[i]}: date {raw.iloc[i]!r} could be "
                    f"{as_month_first.iloc[i]:%Y-%m-%d} or {as_day_first.iloc[i]:%Y-%m-%d}, and no date in the "
                    f"file tells which; pass --date-format {month_first} (month first) "
                    f"or --date-format {day_first} (day first)"
                )
        if as_month_first is not None:
            return month_first, as_month_first
        if as_day_first is not None:
            return day_first, as_day_first
    if best is not None:
        return best[1], best[2]  # the rows this format cannot read are reported by line
    i = int(np.flatnonzero((raw != "").to_numpy())[0])
    known = ", ".join(_readable(f) for f in (*_UNAMBIGUOUS_FORMATS, *(f for pair in _SLASHED_PAIRS for f in pair)))
    raise DataError(
        f"{path}, line {lines[i]}: cannot read date {raw.iloc[i]!r}: it is in none of the known formats "
        f"({known}); pass the format with --date-format, e.g. --date-format %d-%b-%Y"
    )


def _readable(fmt: str) -> str:
    """A strptime format as people write it: %m/%d/%y -> MM/DD/YY."""
    for directive, shown in (("%Y", "YYYY"), ("%y", "YY"), ("%m", "MM"), ("%d", "DD"),
                             ("%H", "hh"), ("%M", "mm"), ("%S", "ss")):
        fmt = fmt.replace(directive, shown)
    return fmt


def _format_hint(date_format: str | None) -> str:
    if date_format is not None:
        return " (the format given with --date-format)"
    return " like the other dates in the file; if that is the wrong format, pass one with --date-format"


def _read_close_values(raw: pd.Series) -> np.ndarray:
    """Closes as float64, NaN where the text is not a number."""
    grouped = raw.str.fullmatch(_THOUSANDS).to_numpy(dtype=bool)
    if grouped.any():
        raw = raw.where(~grouped, raw.str.replace(",", "", regex=False))
    return pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _raise_first_problem(
    path: Path, lines: np.ndarray, problems: list[tuple[np.ndarray, Callable[[int], str]]]
) -> None:
    """Raise for the problem on the earliest line, so fixing a file goes top to bottom."""
    first: tuple[int, np.ndarray, Callable[[int], str]] | None = None
    for mask, describe in problems:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            if first is None or i < first[0]:
                first = (i, mask, describe)
    if first is None:
        return
    i, mask, describe = first
    more = int(mask.sum()) - 1
    also = f" ({more} more line{'s' if more > 1 else ''} like this)" if more else ""
    raise DataError(f"{path}, line {lines[i]}: {describe(i)}{also}")


def _sorted_unique_closes(
    path: Path, dates: np.ndarray, closes: np.ndarray, close_text: np.ndarray, lines: np.ndarray
) -> tuple[pd.Series, int]:
    """Oldest first, one close per day: a repeated day with the same close is dropped, a different one refused."""
    # Stable, so rows of one day stay in file order and the first line of a clash is named first.
    order = np.argsort(dates, kind="stable")
    dates, closes, close_text, lines = dates[order], closes[order], close_text[order], lines[order]
    repeated = dates[1:] == dates[:-1]
    clash = np.flatnonzero(repeated & (closes[1:] != closes[:-1]))
    if clash.size:
        k = int(clash[np.argmin(lines[clash])])
        day = pd.Timestamp(dates[k]).date()
        raise DataError(
            f"{path}, line {lines[k + 1]}: date {day} is also on line {lines[k]} with a different close "
            f"({close_text[k]} there, {close_text[k + 1]} here); keep one of the two lines"
        )
    keep = np.concatenate(([True], ~repeated))
    return make_closes(dates[keep], closes[keep]), int(repeated.sum())
