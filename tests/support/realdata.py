"""The README's real data set, from tests/fixtures (excerpts in the original layouts): CSI 300 ends on
2021-01-27, CSI 500 on 2021-02-05, the Hang Seng Index on 2026-07-24."""

from __future__ import annotations

from pathlib import Path

from gql.importer import import_csv

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REAL = [("sh000300.csv", "000300", "CSI 300"), ("sh000905.csv", "000905", "CSI 500"), ("HSI.csv", "HSI", "Hang Seng Index")]


def import_real(data_dir: Path) -> Path:
    """Import the three indexes into `data_dir` with the importer, as the README does."""
    for file, code, name in REAL:
        import_csv(FIXTURES / file, data_dir, code, name)
    return data_dir
