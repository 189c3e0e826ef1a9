"""Helpers the tests share: imported by test files and conftest.py, never collected as tests.

`http` (queries, auth header, GraphQL calls through a TestClient), `servers` (redis-server and
`python -m gql serve` processes of the suite's own), `topologies` (a Redis Cluster, a Sentinel group and
TLS-only servers of the suite's own), `waiting` (polling for events with no signal),
`settings` (variations of the base `settings` fixture), `browser` (the system Chromium and screenshots), `realdata` (the README's real data set, imported).
"""
