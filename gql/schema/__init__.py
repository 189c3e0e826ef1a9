"""The GraphQL schema.

| module | owns |
|---|---|
| `types.py` | the GraphQL types and enums, the cached fields' names, how cached values become types |
| `arguments.py` | argument checks (codes, ranges, asOf) with messages that say what is allowed |
| `resolvers.py` | `Query`, `Mutation` and the request `Context` |
| `report.py` | the cache report (`extensions.cache`), one typed shape |
| `build.py` | `build_schema(settings)` |
"""
