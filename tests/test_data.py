"""Price data: store ordering and version, the normalized file format, loading and reloading."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gql.data import (
    DEFAULT_INDEXES,
    DataError,
    IndexHistory,
    IndexMeta,
    PriceStore,
    index_file,
    make_closes,
    read_index_file,
    write_index_file,
)
from gql.sources import PriceSource, directory_signature, load_directory, load_store

HEADER = '# {"code": "%s", "name": "Test index", "source": "handmade"}\n'


def history(
    code: str = "000300",
    closes: list[float] | None = None,
    dates: list[str] | None = None,
    name: str = "Test index",
    source: str = "handmade",
) -> IndexHistory:
    closes = [100.0, 101.5, 99.25] if closes is None else closes
    dates = dates or [str(d.date()) for d in pd.bdate_range("2024-01-02", periods=len(closes))]
    return IndexHistory(IndexMeta(code, name, source), make_closes(dates, closes))


def write_raw(data_dir: Path, code: str, body: str, header: str | None = None) -> Path:
    path = data_dir / f"{code}.csv"
    path.write_text((HEADER % code if header is None else header) + body, encoding="utf-8")
    return path


def bump_mtime(path: Path) -> None:
    # Filesystem timestamps can be coarse: move the mtime well away so the signature must differ.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --- make_closes ----------------------------------------------------------------------------------


def test_make_closes_is_in_canonical_form():
    closes = make_closes(["2024-01-02", "2024-01-03"], [1, 2])
    assert closes.name == "close" and closes.index.name == "date"
    assert closes.dtype == np.float64
    assert isinstance(closes.index, pd.DatetimeIndex) and closes.index.unit == "ns"
    assert closes.tolist() == [1.0, 2.0]


def test_make_closes_accepts_dates_and_datetime_indexes():
    from_dates = make_closes([dt.date(2024, 1, 2), dt.date(2024, 1, 3)], [1.0, 2.0])
    from_index = make_closes(pd.DatetimeIndex(["2024-01-02", "2024-01-03"]).as_unit("s"), [1.0, 2.0])
    pd.testing.assert_series_equal(from_dates, from_index, check_exact=True)


# --- PriceStore -----------------------------------------------------------------------------------


def test_default_codes_come_first_in_catalogue_order_then_others_alphabetically():
    codes = ["ZZZ", "HSI", "AAA", "000905", "000300", "399971", "100000"]
    store = PriceStore(history(code) for code in codes)
    assert store.codes == ("000300", "000905", "399971", "HSI", "100000", "AAA", "ZZZ")
    assert [h.meta.code for h in store] == list(store.codes)


def test_all_default_codes_in_reverse_come_out_in_catalogue_order():
    default_codes = [code for code, _ in DEFAULT_INDEXES]
    store = PriceStore(history(code) for code in reversed(default_codes))
    assert store.codes == tuple(default_codes)


def test_store_lookup():
    store = PriceStore([history("000300"), history("XYZ")])
    assert len(store) == 2
    assert "XYZ" in store and "NOPE" not in store
    assert store["XYZ"].meta.code == "XYZ"
    with pytest.raises(KeyError):
        store["NOPE"]


def test_empty_store_is_an_error():
    with pytest.raises(DataError, match="empty"):
        PriceStore([])


def test_duplicate_codes_are_an_error():
    with pytest.raises(DataError, match="twice"):
        PriceStore([history("000300"), history("XYZ"), history("000300", closes=[5.0])])


def test_codes_that_differ_only_in_case_are_an_error():
    with pytest.raises(DataError) as caught:
        PriceStore([history("T1"), history("XYZ"), history("t1", closes=[5.0])])
    assert str(caught.value) == (
        "the data set holds index codes 'T1' and 't1', which are one code (codes are matched ignoring case); keep one of them"
    )


def test_find_takes_a_code_in_any_case_and_gives_it_as_stored():
    store = PriceStore([history("HSI"), history("sh000300.SH")])
    assert [store.find(c) for c in ("HSI", "hsi", "Hsi", "SH000300.sh")] == ["HSI", "HSI", "HSI", "sh000300.SH"]
    assert [store.find(c) for c in ("NOPE", "hſi", "HSı", "")] == [None, None, None, None]  # lookalikes are not letters


def test_first_and_last_date_span_every_index():
    early = history("AAA", closes=[1.0, 2.0], dates=["2020-03-02", "2020-03-03"])
    late = history("BBB", closes=[1.0, 2.0, 3.0], dates=["2021-06-01", "2021-06-02", "2024-12-31"])
    assert (early.first_date, early.last_date) == (dt.date(2020, 3, 2), dt.date(2020, 3, 3))
    assert isinstance(early.first_date, dt.date) and not isinstance(early.first_date, dt.datetime)
    store = PriceStore([late, early])
    assert store.first_date == dt.date(2020, 3, 2)
    assert store.last_date == dt.date(2024, 12, 31)


def test_version_is_stable_for_equal_content():
    first = PriceStore([history("000300"), history("XYZ", closes=[7.0, 8.0])])
    second = PriceStore([history("XYZ", closes=[7.0, 8.0]), history("000300")])
    assert first.version == second.version
    assert isinstance(first.version, str) and len(first.version) == 16
    int(first.version, 16)


@pytest.mark.parametrize(
    "changed",
    [
        history("000300", closes=[100.0, 101.5, 99.26]),
        history("000300", dates=["2024-01-02", "2024-01-03", "2024-01-05"]),
        history("000300", name="Another name"),
        history("000300", source="another source"),
        history("000301"),
    ],
    ids=["close", "date", "name", "source", "code"],
)
def test_version_changes_with_the_content(changed: IndexHistory):
    base = PriceStore([history("000300"), history("XYZ")])
    assert PriceStore([changed, history("XYZ")]).version != base.version


def test_version_changes_when_an_index_is_added():
    base = PriceStore([history("000300")])
    assert PriceStore([history("000300"), history("XYZ")]).version != base.version


def test_version_changes_when_a_close_moves_by_one_ulp():
    closes = [100.0, 101.5, 99.25]
    nudged = [100.0, 101.5, float(np.nextafter(99.25, 100.0))]
    assert PriceStore([history(closes=closes)]).version != PriceStore([history(closes=nudged)]).version


# --- the normalized file format -------------------------------------------------------------------


def test_round_trip_keeps_exact_floats_and_metadata(tmp_path: Path):
    closes = [0.1 + 0.2, 1e-5, 12345.678901234, 1 / 3, 2.0**-30, 9007199254740993.0, 1e300, 5e-324]
    original = history("XYZ", closes=closes, name="Name", source="Exchange, daily \"close\"")
    path = write_index_file(tmp_path, original)
    assert path == index_file(tmp_path, "XYZ") == tmp_path / "XYZ.csv"
    back = read_index_file(path)
    assert back.meta == original.meta
    pd.testing.assert_series_equal(back.closes, original.closes, check_exact=True)
    assert back.closes.to_numpy().tobytes() == original.closes.to_numpy().tobytes()
    assert PriceStore([back]).version == PriceStore([original]).version


def test_round_trip_keeps_many_random_floats_exactly(tmp_path: Path):
    rng = np.random.default_rng(20240102)
    closes = rng.random(3000) * 10.0 ** rng.integers(-6, 9, 3000) + 1e-9
    dates = [str(d.date()) for d in pd.date_range("2000-01-01", periods=len(closes))]
    original = history("RND", closes=closes.tolist(), dates=dates)
    back = read_index_file(write_index_file(tmp_path, original))
    np.testing.assert_array_equal(back.closes.to_numpy(), closes)


@pytest.mark.parametrize(
    "name",
    ["沪深300", "CSI 300 (沪深300)", "Dow Jones, Industrial", 'The "quoted" index', 'a "b", c', 'odd " quote',
     "back\\slash", "#hash, 'single'", "tab\there"],
)
def test_round_trip_keeps_awkward_names(tmp_path: Path, name: str):
    original = history("ODD", name=name)
    back = read_index_file(write_index_file(tmp_path, original))
    assert back.meta.name == name
    pd.testing.assert_series_equal(back.closes, original.closes, check_exact=True)


def test_file_is_utf8_with_a_readable_header(tmp_path: Path):
    path = write_index_file(tmp_path, history("000300", closes=[3500.12], dates=["2024-01-02"], name="沪深300"))
    lines = path.read_bytes().decode("utf-8").split("\n")
    assert lines[0].startswith("# {") and "沪深300" in lines[0]
    assert lines[1:] == ["date,close", "2024-01-02,3500.12", ""]


def test_write_creates_the_directory(tmp_path: Path):
    target = tmp_path / "a" / "b"
    write_index_file(target, history("XYZ"))
    assert (target / "XYZ.csv").is_file()


def test_write_replaces_the_old_file_and_leaves_no_temporary_file(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ", closes=[1.0, 2.0, 3.0]))
    write_index_file(tmp_path, history("XYZ", closes=[4.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["XYZ.csv"]
    assert read_index_file(tmp_path / "XYZ.csv").closes.tolist() == [4.0]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       failing: str):
    path = write_index_file(tmp_path, history("XYZ", closes=[1.0, 2.0]))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(DataError) as caught:  # one line for the user, who can do something about it
        write_index_file(tmp_path, history("XYZ", closes=[3.0, 4.0, 5.0]))
    assert str(caught.value) == f"data directory {tmp_path}: cannot write XYZ.csv in it: No space left on device"
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["XYZ.csv"]


def test_read_missing_file_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read") as caught:
        read_index_file(tmp_path / "XYZ.csv")
    assert str(tmp_path / "XYZ.csv") in str(caught.value)


def test_file_without_header_is_rejected_with_a_hint(tmp_path: Path):
    path = write_raw(tmp_path, "XYZ", "date,close\n2024-01-02,1.0\n", header="")
    with pytest.raises(DataError) as caught:
        read_index_file(path)
    message = str(caught.value)
    assert str(path) in message and "line 1" in message and "python -m gql import" in message


@pytest.mark.parametrize(
    "header",
    ['# {"code": "XYZ", "name": \n', "# not json\n", '# {"code": "XYZ", "name": "n"}\n', '# ["XYZ", "n", "s"]\n',
     "#\n"],
    ids=["truncated", "not-json", "missing-source", "not-an-object", "empty"],
)
def test_bad_json_header_is_rejected(tmp_path: Path, header: str):
    path = write_raw(tmp_path, "XYZ", "date,close\n2024-01-02,1.0\n", header=header)
    with pytest.raises(DataError) as caught:
        read_index_file(path)
    assert str(path) in str(caught.value) and "line 1" in str(caught.value)


def test_file_name_must_match_the_code(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ"))
    renamed = tmp_path / "ABC.csv"
    (tmp_path / "XYZ.csv").rename(renamed)
    with pytest.raises(DataError) as caught:
        read_index_file(renamed)
    message = str(caught.value)
    assert str(renamed) in message and "'XYZ'" in message and "does not match" in message


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("2024-01-02,1.0\n2024-13-01,2.0\n", 4),
        ("2024-01-02,1.0\n2024-01-03,2.0\n02/01/2024,3.0\n", 5),
        ("not-a-date,1.0\n", 3),
        ("2024-01-02,1.0\n2024-01-03,0\n", 4),
        ("2024-01-02,-5.5\n", 3),
        ("2024-01-02,1.0\n2024-01-03,\n", 4),
    ],
    ids=["month-13", "other-format", "word", "zero-close", "negative-close", "missing-close"],
)
def test_bad_row_names_the_file_and_line(tmp_path: Path, body: str, line: int):
    path = write_raw(tmp_path, "XYZ", "date,close\n" + body)
    with pytest.raises(DataError) as caught:
        read_index_file(path)
    message = str(caught.value)
    assert str(path) in message and f"line {line}:" in message


@pytest.mark.parametrize(
    "body",
    ["2024-01-03,1.0\n2024-01-02,2.0\n", "2024-01-02,1.0\n2024-01-02,2.0\n"],
    ids=["descending", "repeated"],
)
def test_dates_must_be_ascending_and_unique(tmp_path: Path, body: str):
    path = write_raw(tmp_path, "XYZ", "date,close\n" + body)
    with pytest.raises(DataError, match="ascending") as caught:
        read_index_file(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "body", ["date,close\n", "day,price\n2024-01-02,1.0\n"], ids=["no-rows", "wrong-columns"]
)
def test_table_header_and_rows_are_required(tmp_path: Path, body: str):
    path = write_raw(tmp_path, "XYZ", body)
    with pytest.raises(DataError, match="line 2") as caught:
        read_index_file(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("date,close\n2024-01-02,1.0\n2024-01-03,n/a?\n", "line 4:"),  # not a number
        ("", "line 2:"),  # only the metadata line
        ("date,close\n2024-01-02,1.0\n2024-01-03,inf\n", "line 4:"),  # not finite
        # A normalized file has no blank lines: the blank line itself (line 4) is the problem reported.
        ("date,close\n2024-01-02,1.0\n\n2024-01-03,-1.0\n", "line 4:"),
    ],
)
def test_malformed_rows_are_data_errors_naming_the_line(tmp_path: Path, body: str, line: str):
    path = write_raw(tmp_path, "XYZ", body)
    with pytest.raises(DataError, match=line) as caught:
        read_index_file(path)
    assert str(path) in str(caught.value)


# --- load_directory and load_store ----------------------------------------------------------------


def test_missing_directory_says_how_to_create_it(tmp_path: Path):
    with pytest.raises(DataError, match="python -m gql import") as caught:
        load_directory(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(caught.value)


def test_empty_directory_says_how_to_fill_it(tmp_path: Path):
    with pytest.raises(DataError, match="python -m gql import") as caught:
        load_directory(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_directory_of_only_hidden_and_temporary_files_counts_as_empty(tmp_path: Path):
    (tmp_path / ".XYZ.abc123.tmp").write_text("partial")
    (tmp_path / ".hidden.csv").write_text("junk")
    (tmp_path / "notes.txt").write_text("junk")
    with pytest.raises(DataError, match="no index files"):
        load_directory(tmp_path)


def test_load_directory_reads_index_files_and_ignores_the_rest(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ", closes=[1.0, 2.0]))
    write_index_file(tmp_path, history("000905", closes=[3.0]))
    (tmp_path / ".000300.k2j4h5.tmp").write_text("half-written garbage")
    (tmp_path / ".broken.csv").write_text("garbage")
    (tmp_path / "README.md").write_text("garbage")
    (tmp_path / "000300.csv.bak").write_text("garbage")
    store = load_directory(tmp_path)
    assert store.codes == ("000905", "XYZ")
    assert store["XYZ"].closes.tolist() == [1.0, 2.0]
    assert load_store(tmp_path).version == store.version


def test_two_files_of_one_code_in_different_cases_fail_the_load(tmp_path: Path):
    """A data directory written by hand with T1.csv and t1.csv: refused, naming both files."""
    write_index_file(tmp_path, history("XYZ"))
    write_raw(tmp_path, "T1", "date,close\n2024-01-02,1.0\n")
    write_raw(tmp_path, "t1", "date,close\n2024-01-02,2.0\n")
    with pytest.raises(DataError) as caught:
        load_directory(tmp_path)
    assert str(caught.value) == (
        f"data directory {tmp_path} holds T1.csv and t1.csv, which are one index (codes are matched ignoring case); "
        "remove one of them"
    )


def test_writing_a_code_in_another_case_replaces_its_file_and_takes_the_new_spelling(tmp_path: Path):
    write_index_file(tmp_path, history("T1", closes=[1.0, 2.0]))
    path = write_index_file(tmp_path, history("t1", closes=[3.0]))
    assert path == tmp_path / "t1.csv" and sorted(p.name for p in tmp_path.iterdir()) == ["t1.csv"]
    assert load_directory(tmp_path).codes == ("t1",)


def test_a_file_named_in_another_case_than_its_code_is_read(tmp_path: Path):
    """What the directory holds for a moment while t1 replaces T1.csv (then renames it): a good file."""
    path = write_raw(tmp_path, "T1", "date,close\n2024-01-02,1.0\n", header=HEADER % "t1")
    assert read_index_file(path).meta.code == "t1"
    assert load_directory(tmp_path).codes == ("t1",)


def test_one_bad_file_fails_the_whole_load(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ"))
    bad = write_raw(tmp_path, "ABC", "date,close\n2024-01-02,-1\n")
    with pytest.raises(DataError, match=str(bad)):
        load_directory(tmp_path)


def test_load_store_without_a_directory_gives_the_sample():
    store = load_store(None)
    assert len(store) == 10
    assert store.codes == tuple(code for code, _ in DEFAULT_INDEXES)
    assert [h.meta.name for h in store] == [name for _, name in DEFAULT_INDEXES]
    assert load_store(None).version == store.version


# --- directory_signature and PriceSource ----------------------------------------------------------


def test_signature_of_no_directory_and_of_a_missing_one(tmp_path: Path):
    assert directory_signature(None) == ()
    assert directory_signature(tmp_path / "nope") == ("missing",)


def test_signature_ignores_hidden_and_other_files(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ"))
    before = directory_signature(tmp_path)
    (tmp_path / ".XYZ.abc.tmp").write_text("in progress")
    (tmp_path / "notes.txt").write_text("x")
    assert directory_signature(tmp_path) == before


def test_sample_source_never_changes():
    source = PriceSource(None)
    assert source.description == "synthetic sample"
    assert len(source.store) == 10
    assert not source.changed()


def test_source_is_unchanged_right_after_loading(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ"))
    source = PriceSource(tmp_path)
    assert source.description == str(tmp_path)
    assert source.store.codes == ("XYZ",)
    assert not source.changed()


def test_rewritten_file_is_noticed_and_reloaded(tmp_path: Path):
    path = write_index_file(tmp_path, history("XYZ", closes=[1.0, 2.0, 3.0]))
    source = PriceSource(tmp_path)
    old_version = source.store.version
    write_index_file(tmp_path, history("XYZ", closes=[1.0, 2.0, 4.0]))  # same size: only the mtime tells
    bump_mtime(path)
    assert source.changed()
    store = source.reload()
    assert source.store is store
    assert store.version != old_version
    assert store["XYZ"].closes.tolist() == [1.0, 2.0, 4.0]
    assert not source.changed()


def test_added_and_removed_files_are_noticed(tmp_path: Path):
    write_index_file(tmp_path, history("XYZ"))
    source = PriceSource(tmp_path)
    write_index_file(tmp_path, history("ABC"))
    assert source.changed()
    assert source.reload().codes == ("ABC", "XYZ")
    (tmp_path / "ABC.csv").unlink()
    assert source.changed()
    assert source.reload().codes == ("XYZ",)


def test_bad_reload_keeps_the_previous_store(tmp_path: Path):
    path = write_index_file(tmp_path, history("XYZ", closes=[1.0, 2.0]))
    source = PriceSource(tmp_path)
    good = source.store
    path.write_text("date,close\n2024-01-02,1.0\n", encoding="utf-8")
    bump_mtime(path)
    assert source.changed()
    with pytest.raises(DataError, match="line 1"):
        source.reload()
    assert source.store is good
    assert source.store.version == good.version
    # Once the file is fixed, the next reload picks it up.
    write_index_file(tmp_path, history("XYZ", closes=[5.0, 6.0]))
    bump_mtime(path)
    assert source.changed()
    assert source.reload()["XYZ"].closes.tolist() == [5.0, 6.0]


def test_vanished_directory_is_noticed_and_keeps_the_previous_store(tmp_path: Path):
    data_dir = tmp_path / "prices"
    write_index_file(data_dir, history("XYZ"))
    source = PriceSource(data_dir)
    good = source.store
    (data_dir / "XYZ.csv").unlink()
    data_dir.rmdir()
    assert source.changed()
    with pytest.raises(DataError, match="does not exist"):
        source.reload()
    assert source.store is good


def test_source_on_a_bad_directory_fails_at_start(tmp_path: Path):
    with pytest.raises(DataError):
        PriceSource(tmp_path / "nope")
