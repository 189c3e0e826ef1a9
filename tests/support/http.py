"""The API as the tests ask it: the dashboard's queries, the admin header, GraphQL calls through a TestClient."""

from __future__ import annotations

from starlette.testclient import TestClient

CHART = "query($codes: [String!], $start: Date, $end: Date, $f: Frequency! = DAILY) { indexChart(codes: $codes, start: $start, end: $end, frequency: $f) { frequency start end series { code name totalReturn annualizedVolatility maxDrawdown points { date close normalized drawdown } } } }"
YIELD = "query($codes: [String!], $asOf: Date) { yieldThisYear(codes: $codes, asOf: $asOf) { code name yieldPct baseDate baseClose lastDate lastClose baseIsFirstCloseOfYear } }"
REFRESH = "mutation($t: [CacheTarget!]) { refreshCache(targets: $t) { refreshed { target durationMs } } }"
ADMIN_TOKEN = "test-admin-token"  # the `settings` fixture's admin token
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def gql(client: TestClient, query: str, headers: dict | None = None, **variables) -> dict:
    """POST a query; the answer must be a 200 (GraphQL errors come back in the body)."""
    response = client.post("/graphql", json={"query": query, "variables": variables}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()


def statuses(body: dict) -> list[str]:
    """The cache status of each cached field of an answer, in query order."""
    return [entry["status"] for entry in body["extensions"]["cache"]]


def data_version_of(client: TestClient) -> str:
    """The data version a TestClient's app reports on /healthz."""
    return client.get("/healthz").json()["data"]["version"]


def error_of(response) -> dict:
    """The one GraphQL error of a 200 answer."""
    assert response.status_code == 200, response.text
    [error] = response.json()["errors"]
    return error
