"""The CSV importer: real-world layouts in, normalized index files out, bad files refused with a clear line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from gql.data import DataError, read_index_file
from gql.importer import ImportReport, import_csv, parse_closes

FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path: Path, content: str | bytes, name: str = "prices.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def yearly_returns(closes: pd.Series) -> dict[int, float]:
    """Year-end close over the previous year-end close, in percent, as the README publishes them."""
    year_end = closes.groupby(closes.index.year).last()
    return {int(year): round((year_end[year] / year_end[year - 1] - 1) * 100, 2) for year in year_end.index[1:]}


# --- the real files ---------------------------------------------------------------------------------

# The README gives 9,024 rows for HSI.csv, but the file holds 9,025 distinct trading days: it has no
# newline after its last row, so `wc -l` (9,025 newlines, minus the header) undercounts by one.
REAL_FILES = [
    ("sh000300.csv", "000300", 3846, dt.date(2005, 4, 8), dt.date(2021, 1, 27)),
    ("sh000905.csv", "000905", 3424, dt.date(2007, 1, 15), dt.date(2021, 2, 5)),
    ("HSI.csv", "HSI", 9025, dt.date(1990, 1, 2), dt.date(2026, 7, 24)),
]


@pytest.mark.parametrize(("file", "code", "rows", "first", "last"), REAL_FILES)
def test_real_layout_imports(tmp_path, file, code, rows, first, last):
    report = import_csv(FIXTURES / file, tmp_path, code, f"index {code}")

    assert report == ImportReport(
        path=tmp_path / f"{code}.csv",
        destination=str(tmp_path / f"{code}.csv"),
        code=code,
        name=f"index {code}",
        rows=rows,
        first_date=first,
        last_date=last,
        dropped_duplicates=0,
        date_column=report.date_column,
        close_column=report.close_column,
        date_format=report.date_format,
    )
    history = read_index_file(report.path)
    assert history.meta.code == code
    assert history.meta.name == f"index {code}"
    assert history.meta.source == f"imported from {file}"
    pd.testing.assert_series_equal(history.closes, parse_closes(FIXTURES / file))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{code}.csv"]  # no temp files left


def test_csi_columns_and_dates_detected(tmp_path):
    report = import_csv(FIXTURES / "sh000300.csv", tmp_path, "000300", "CSI 300")
    assert (report.date_column, report.close_column, report.date_format) == ("candle_end_time", "close", "%Y-%m-%d")


def test_hsi_two_digit_years_and_newest_first():
    closes = parse_closes(FIXTURES / "HSI.csv")
    assert closes.index.is_monotonic_increasing and closes.index.is_unique
    # 07/24/26 is the first data line, 01/02/90 the last.
    assert closes.index[-1] == pd.Timestamp("2026-07-24")
    assert closes.iloc[-1] == 24963.23
    assert closes.index[0] == pd.Timestamp("1990-01-02")
    assert closes.iloc[0] == 2838.07


def test_csi300_published_returns():
    returns = yearly_returns(parse_closes(FIXTURES / "sh000300.csv"))
    assert (returns[2019], returns[2020]) == (36.07, 27.21)


def test_hsi_published_returns():
    returns = yearly_returns(parse_closes(FIXTURES / "HSI.csv"))
    assert (returns[2019], returns[2020], returns[2022], returns[2024]) == (9.07, -3.40, -15.46, 17.67)


def test_canonical_series():
    closes = parse_closes(FIXTURES / "sh000905.csv")
    assert closes.name == "close"
    assert closes.index.name == "date"
    assert closes.dtype == "float64"
    assert closes.index.dtype == "datetime64[ns]"


# --- other layouts ----------------------------------------------------------------------------------


def test_chinese_headers_with_bom(tmp_path):
    path = write(tmp_path, "\ufeff日期,开盘,收盘价,成交量\n2024-01-03,10,11.5,100\n2024-01-02,9,10.5,100\n")
    report = import_csv(path, tmp_path / "data", "000001", "上证指数")
    assert (report.date_column, report.close_column, report.rows) == ("日期", "收盘价", 2)
    history = read_index_file(report.path)
    assert history.meta.name == "上证指数"
    assert history.closes.tolist() == [10.5, 11.5]


def test_chinese_headers_in_gbk(tmp_path):
    path = write(tmp_path, "交易日期,收盘\n20240102,10.5\n20240103,11.5\n".encode("gbk"))
    closes = parse_closes(path)
    assert closes.index.tolist() == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]


@pytest.mark.parametrize(
    ("content", "first_day"),
    [
        ("Date\tClose\n2024/01/02\t10.5\n2024/01/03\t11.5\n", "2024-01-02"),
        ("Date;Close\n02.01.2024;10.5\n03.01.2024;11.5\n", "2024-01-02"),
        ("  DATE , CLOSE \n2024-01-02 , 10.5\n2024-01-03 , 11.5\n", "2024-01-02"),
        ("trade_date,close\n20240102,10.5\n20240103,11.5\n", "2024-01-02"),
        ("Trade Date,Closing Price\n01/02/2024,10.5\n01/13/2024,11.5\n", "2024-01-02"),
        ("Date,Close\n13/01/2024,11.5\n02/01/2024,10.5\n", "2024-01-02"),
        ("datetime,close\n2024-01-02 15:00:00,10.5\n2024-01-03 15:00:00,11.5\n", "2024-01-02"),
        ("Date,Close\r\n2024-01-02,10.5\r\n\r\n2024-01-03,11.5\r\n\r\n", "2024-01-02"),
    ],
    ids=["tab", "semicolon-dotted", "case-and-spaces", "yyyymmdd", "us-4-digit", "day-first", "timestamps",
         "crlf-blank"],
)
def test_layouts(tmp_path, content, first_day):
    closes = parse_closes(write(tmp_path, content))
    assert closes.index[0] == pd.Timestamp(first_day)
    assert closes.tolist()[0] == 10.5
    assert len(closes) == 2


def test_plain_close_preferred_over_adjusted(tmp_path):
    path = write(tmp_path, "Date,Open,Adj Close,Close\n2024-01-02,1,2,3\n")
    assert parse_closes(path).tolist() == [3.0]


def test_adjusted_close_when_nothing_else(tmp_path):
    path = write(tmp_path, "Date,Open,Adj Close\n2024-01-02,1,2\n")
    assert parse_closes(path).tolist() == [2.0]


def test_quoted_thousands_separators(tmp_path):
    path = write(tmp_path, 'Date, Close\n01/02/24, "24,963.23"\n01/03/24, "1,234,567"\n01/13/24, 999.5\n')
    assert parse_closes(path).tolist() == [24963.23, 1234567.0, 999.5]


def test_explicit_columns(tmp_path):
    path = write(tmp_path, "when,open,last\n2024-01-02,1,2\n2024-01-03,3,4\n")
    report = import_csv(path, tmp_path / "data", "X", "X", date_column="when", close_column=" OPEN ")
    assert (report.date_column, report.close_column) == ("when", "open")
    assert read_index_file(report.path).closes.tolist() == [1.0, 3.0]


def test_explicit_column_overrides_detection(tmp_path):
    path = write(tmp_path, "Date,Close,Adj Close\n2024-01-02,10,9\n")
    assert parse_closes(path, close_column="adj close").tolist() == [9.0]


def test_explicit_column_missing_lists_columns(tmp_path):
    path = write(tmp_path, "Date,Open,Close\n2024-01-02,1,2\n")
    with pytest.raises(DataError) as err:
        parse_closes(path, close_column="Last")
    message = str(err.value)
    assert "prices.csv, line 1" in message and "'Last'" in message
    assert "'Date', 'Open', 'Close'" in message


def test_ambiguous_slashed_dates_refused(tmp_path):
    path = write(tmp_path, "Date,Close\n01/02/2024,10\n03/04/2024,11\n")
    with pytest.raises(DataError) as err:
        parse_closes(path)
    message = str(err.value)
    assert "prices.csv, line 2" in message
    assert "2024-01-02 or 2024-02-01" in message
    assert "--date-format %m/%d/%Y" in message and "--date-format %d/%m/%Y" in message


@pytest.mark.parametrize(("fmt", "first_day"), [("%m/%d/%Y", "2024-01-02"), ("%d/%m/%Y", "2024-02-01")])
def test_date_format_option_settles_ambiguity(tmp_path, fmt, first_day):
    path = write(tmp_path, "Date,Close\n01/02/2024,10\n03/04/2024,11\n")
    closes = parse_closes(path, date_format=fmt)
    assert closes.index[0] == pd.Timestamp(first_day)


def test_date_format_option_overrides_detection(tmp_path):
    path = write(tmp_path, "Date,Close\n02-Jan-2024,10\n03-Jan-2024,11\n")
    assert parse_closes(path, date_format="%d-%b-%Y").index[0] == pd.Timestamp("2024-01-02")


def test_duplicate_dates_with_same_close_dropped(tmp_path):
    path = write(tmp_path, "Date,Close\n2024-01-03,11\n2024-01-02,10\n2024-01-03,11.0\n2024-01-03,11\n")
    report = import_csv(path, tmp_path / "data", "X", "X")
    assert (report.rows, report.dropped_duplicates) == (2, 2)
    assert read_index_file(report.path).closes.tolist() == [10.0, 11.0]


# --- bad files --------------------------------------------------------------------------------------

BAD_FILES = [
    ("Day,Close\n2024-01-02,10\n", 1, "no date column; the columns are 'Day', 'Close'"),
    ("Date,Open,Price\n2024-01-02,1,2\n", 1,
     "no close column; the columns are 'Date', 'Open', 'Price'; looked for close"),
    ("Date,Close\n2024-01-02,10\n2024-13-45,11\n", 3, "cannot read date '2024-13-45' as YYYY-MM-DD"),
    ("Date,Close\n2024-01-02,10\nyesterday,11\n", 3, "cannot read date 'yesterday'"),
    ("Date,Close\nsoon,10\nlater,11\n", 2, "cannot read date 'soon': it is in none of the known formats"),
    ("Date,Close\n2024-01-02,10\n,11\n", 3, "the date is empty"),
    ("Date,Close\n2024-01-02,10\n2024-01-03,\n", 3, "the close (column 'Close') is empty"),
    ("Date,Close\n2024-01-02,10\n2024-01-03\n", 3, "the close (column 'Close') is empty"),
    ("Date,Close\n2024-01-02,10\n2024-01-03,n/a\n2024-01-04,-\n", 3,
     "close 'n/a' is not a number (1 more line like this)"),
    ("Date,Close\n2024-01-02,10\n2024-01-03,inf\n", 3, "close 'inf' is not a number"),
    ("Date,Close\n2024-01-02,10\n2024-01-03,0\n", 3, "close '0' is not positive"),
    ("Date,Close\n2024-01-02,10\n2024-01-03,-5.5\n", 3, "close '-5.5' is not positive"),
    ("Date,Close\n2024-01-04,10\n2024-01-03,11\n\n2024-01-03,12\n", 5,
     "date 2024-01-03 is also on line 3 with a different close (11 there, 12 here)"),
    ("Date,Close\n2024-01-02,10\n2024-01-03,1,234.5\n", 3, "3 fields but the header has 2"),
    ("", 1, "the file is empty"),
    ("\n\n", 1, "the file is empty"),
    ("Date,Close\n", 1, "header but no rows"),
    ("Date,Close\n\n\n", 1, "header but no rows"),
    (b"Date,Close\n2024-01-02,10\n" + b"2024-01-03,\xff\xfe\xff\n", 3, "not UTF-8"),
]


@pytest.mark.parametrize(("content", "line", "problem"), BAD_FILES)
def test_bad_file_refused_with_line_and_problem(tmp_path, content, line, problem):
    path = write(tmp_path, content, name="bad-prices.csv")
    with pytest.raises(DataError) as err:
        parse_closes(path)
    message = str(err.value)
    assert f"bad-prices.csv, line {line}: " in message
    assert problem in message


def test_earliest_problem_reported_first(tmp_path):
    path = write(tmp_path, "Date,Close\n2024-01-02,10\n2024-01-03,x\n,11\n2024-01-05,-1\n")
    with pytest.raises(DataError, match=r"line 3: close 'x' is not a number$"):
        parse_closes(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: cannot read"):
        parse_closes(tmp_path / "nope.csv")


def test_failed_import_leaves_data_dir_unchanged(tmp_path):
    data_dir = tmp_path / "data"
    good = import_csv(write(tmp_path, "Date,Close\n2024-01-02,10\n", "good.csv"), data_dir, "X", "Good")
    before = good.path.read_bytes()
    bad = write(tmp_path, "Date,Close\n2024-01-02,10\n2024-01-03,oops\n", "bad.csv")

    with pytest.raises(DataError, match="bad.csv, line 3"):
        import_csv(bad, data_dir, "X", "Bad")

    assert good.path.read_bytes() == before
    assert [p.name for p in data_dir.iterdir()] == ["X.csv"]


def test_import_replaces_existing_file(tmp_path):
    data_dir = tmp_path / "data"
    import_csv(write(tmp_path, "Date,Close\n2024-01-02,10\n", "old.csv"), data_dir, "X", "Old")
    import_csv(write(tmp_path, "Date,Close\n2024-01-02,20\n", "new.csv"), data_dir, "X", "New")
    history = read_index_file(data_dir / "X.csv")
    assert (history.meta.name, history.meta.source, history.closes.tolist()) == ("New", "imported from new.csv", [20.0])
    assert [p.name for p in data_dir.iterdir()] == ["X.csv"]


def test_report_says_what_was_replaced(tmp_path):
    data_dir = tmp_path / "data"
    first = import_csv(write(tmp_path, "Date,Close\n2024-01-02,10\n2024-01-03,11\n", "old.csv"), data_dir, "X", " Old ")
    assert (first.name, first.replaced) == ("Old", None)
    again = import_csv(write(tmp_path, "Date,Close\n2024-01-02,20\n", "new.csv"), data_dir, "X", "New")
    old = again.replaced
    assert old is not None and not isinstance(old, DataError)
    assert (old.meta.name, len(old.closes), old.first_date, old.last_date) == ("Old", 2, dt.date(2024, 1, 2), dt.date(2024, 1, 3))


def test_an_unreadable_file_is_replaced_and_reported_as_such(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "X.csv").write_text("not an index file\n")
    report = import_csv(write(tmp_path, "Date,Close\n2024-01-02,20\n"), data_dir, "X", "New")
    assert isinstance(report.replaced, DataError) and "X.csv, line 1: not a normalized index file" in str(report.replaced)
    assert read_index_file(data_dir / "X.csv").meta.name == "New"


def test_reimport_in_another_case_replaces_the_index(tmp_path):
    data_dir = tmp_path / "data"
    import_csv(write(tmp_path, "Date,Close\n2024-01-02,10\n", "old.csv"), data_dir, "T1", "Old")
    report = import_csv(write(tmp_path, "Date,Close\n2024-01-02,20\n", "new.csv"), data_dir, "t1", "New")
    assert report.path == data_dir / "t1.csv" and [p.name for p in data_dir.iterdir()] == ["t1.csv"]
    history = read_index_file(report.path)
    assert (history.meta.code, history.meta.name, history.closes.tolist()) == ("t1", "New", [20.0])


def test_an_index_reimported_in_another_case_is_one_index_reached_in_any_case(make_client, tmp_path):
    data_dir = tmp_path / "data"
    import_csv(write(tmp_path, "Date,Close\n2024-01-02,10\n2024-01-03,11\n", "old.csv"), data_dir, "T1", "Old")
    import_csv(write(tmp_path, "Date,Close\n2024-01-02,20\n2024-01-03,22\n", "new.csv"), data_dir, "t1", "New")
    client = make_client(data_dir=data_dir)
    query = '{ indexes { code name } a: yieldThisYear(codes: ["T1"]) { code } b: yieldThisYear(codes: ["t1"]) { code } }'
    answer = client.post("/graphql", json={"query": query}).json()
    assert "errors" not in answer, answer
    assert answer["data"] == {"indexes": [{"code": "t1", "name": "New"}], "a": [{"code": "t1"}], "b": [{"code": "t1"}]}


@pytest.mark.parametrize("code", ["", "../x", "a/b", "a\\b", ".hidden", "..", "a b", "x" * 21, "沪深300"])
def test_invalid_code_rejected(tmp_path, code):
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="index code .* is not valid; use 1-20 letters"):
        import_csv(FIXTURES / "sh000300.csv", data_dir, code, "CSI 300")
    assert not data_dir.exists()


@pytest.mark.parametrize("code", ["000300", "HSI", "sh000300.SH", "x" * 20, "a_b-c"])
def test_valid_codes(tmp_path, code):
    path = write(tmp_path, "Date,Close\n2024-01-02,10\n")
    assert import_csv(path, tmp_path / "data", code, "Name").path.name == f"{code}.csv"


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_rejected(tmp_path, name):
    with pytest.raises(DataError, match="index name is empty"):
        import_csv(FIXTURES / "sh000300.csv", tmp_path / "data", "000300", name)
    assert not (tmp_path / "data").exists()
