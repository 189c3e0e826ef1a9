"""Cached GraphQL API for market index history charts and year-to-date yields."""

__version__ = "0.1.0"
