"""The schema contract: schema.graphql in sync, the issue's names and shapes present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gql.config import Settings
from gql.schema.build import build_schema

schema = build_schema(Settings())

ROOT = Path(__file__).resolve().parent.parent


def test_schema_graphql_is_in_sync_with_the_code():
    committed = (ROOT / "schema.graphql").read_text(encoding="utf-8")
    assert committed == schema.as_str() + "\n", "schema.graphql is stale: run `make schema` and commit it"


def test_export_schema_command_prints_the_schema():
    out = subprocess.run(
        [sys.executable, "-m", "gql", "export-schema"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out == schema.as_str() + "\n"


def test_contract_fields_and_arguments():
    sdl = schema.as_str()
    for line in [
        "indexChart(codes: [String!] = null, start: Date = null, end: Date = null, frequency: Frequency! = DAILY): IndexChart!",
        "yieldThisYear(codes: [String!] = null, asOf: Date = null): [IndexYield!]!",
        "refreshCache(targets: [CacheTarget!] = null): RefreshResult!",
        "indexes: [IndexInfo!]!",
    ]:
        assert line in sdl
    for type_name, fields in {
        "IndexInfo": ["code: String!", "name: String!", "source: String!", "firstDate: Date!", "lastDate: Date!"],
        "PricePoint": ["date: Date!", "close: Float!", "normalized: Float!", "drawdown: Float!"],
        "IndexSeries": ["points: [PricePoint!]!", "totalReturn: Float!", "annualizedVolatility: Float!", "maxDrawdown: Float!"],
        "IndexChart": ["frequency: Frequency!", "start: Date!", "end: Date!", "series: [IndexSeries!]!"],
        "IndexYield": ["yieldPct: Float!", "baseDate: Date!", "baseClose: Float!", "lastDate: Date!", "lastClose: Float!"],
        "RefreshedField": ["target: CacheTarget!", "durationMs: Float!"],
        "RefreshResult": ["refreshed: [RefreshedField!]!"],
    }.items():
        block = sdl.split(f"type {type_name} {{", 1)[1].split("}", 1)[0]
        for field in fields:
            assert field in block, f"{type_name}.{field}"


def test_lookalike_letters_are_not_index_codes():
    import pytest

    from gql.errors import UserInputError
    from gql.schema.arguments import resolve_codes
    from gql.sources import load_store

    store = load_store(None)
    assert resolve_codes(store, [" hsi "]) == ("HSI",)
    for lookalike in ("hſi", "HSı", "ＨＳＩ"):
        with pytest.raises(UserInputError, match="unknown index code"):
            resolve_codes(store, [lookalike])
