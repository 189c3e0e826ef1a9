"""Variations of the test settings (the base is the `settings` fixture in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import replace

from gql.config import Settings


def with_settings(settings: Settings, **changes) -> Settings:
    return replace(settings, **changes)
