// What apollo.mjs and urql.mjs share: the server URL, the queries, a fetch that records every request, and the
// scenarios' plain facts. Each script prints one JSON document that tests/test_clients.py asserts on.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

export const YIELD = "query Y($codes: [String!], $asOf: Date) { yieldThisYear(codes: $codes, asOf: $asOf) { code yieldPct lastDate } }";
export const CHART =
  "query C($codes: [String!], $start: Date, $end: Date, $f: Frequency!) { indexChart(codes: $codes, start: $start, end: $end, frequency: $f) { start end series { code totalReturn points { date close } } } }";
export const REFRESH = "mutation { refreshCache { dataVersion refreshed { target } } }";
// Variables of scenario 1; tests/test_clients.py posts the same ones with httpx2.
export const VARIABLES = {
  yield: { codes: ["HSI"], asOf: "2026-06-30" },
  chart: { codes: ["000300", "HSI"], start: "2024-01-01", end: "2024-03-31", f: "WEEKLY" },
};
// Scenario 4 uses variants of their own, so that what scenario 1 computed does not change what it sees.
export const REFRESH_VARIABLES = {
  networkOnly: { codes: ["HSI"], asOf: "2025-06-30" },
  cacheAndNetwork: { codes: ["000300"], asOf: "2025-06-30" },
};

export function persistedQuery(client) {
  // An operation name of each client's own: its hash is unknown to the server until this client registers it.
  return `query ${client}Persisted($codes: [String!]) { yieldThisYear(codes: $codes) { code yieldPct } }`;
}

export function serverUrl() {
  const base = process.argv[2] || process.env.GQL_URL;
  if (!base) throw new Error("usage: node <script> http://127.0.0.1:PORT (or GQL_URL)");
  return `${base.replace(/\/+$/, "")}/graphql`;
}

export function adminToken() {
  const token = process.env.GQL_ADMIN_TOKEN;
  if (!token) throw new Error("GQL_ADMIN_TOKEN must name the server's admin token");
  return token;
}

export const sha256 = (text) => createHash("sha256").update(text).digest("hex");

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function version(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version;
}

function parsed(value) {
  try {
    return JSON.parse(value);
  } catch {
    return value;
  }
}

/** A `fetch` that records every request: method, what was sent (from the URL or the body), status, Cache-Control, errors. */
export class Recorder {
  constructor() {
    this.requests = [];
    this.fetch = this.fetch.bind(this);
  }

  async fetch(input, init = {}) {
    const request = new Request(input, init);
    const url = new URL(request.url);
    let sent;
    if (request.method === "GET") {
      sent = Object.fromEntries([...url.searchParams].map(([name, value]) => [name, name === "query" || name === "operationName" ? value : parsed(value)]));
    } else {
      sent = parsed(await request.clone().text());
    }
    const response = await fetch(request);
    let body = null;
    try {
      body = await response.clone().json();
    } catch {}
    this.requests.push({
      method: request.method,
      path: url.pathname,
      sent,
      status: response.status,
      cacheControl: response.headers.get("cache-control"),
      hasData: body !== null && body.data != null,
      errors: (body && body.errors ? body.errors : []).map((e) => ({ message: e.message, code: e.extensions && e.extensions.code })),
    });
    return response;
  }

  /** The requests made while `step` ran, with what it returned. */
  async during(step) {
    const start = this.requests.length;
    const result = await step();
    return { ...result, requests: this.requests.slice(start) };
  }
}

/** The fields of a GraphQL error a client handed over, or a note that it handed none over. */
export function errorFacts(graphQLError, wrapper) {
  if (!graphQLError) return { wrapper, code: null, message: null };
  return { wrapper, code: graphQLError.extensions ? graphQLError.extensions.code : null, message: graphQLError.message };
}

export function emit(document) {
  process.stdout.write(`${JSON.stringify(document)}\n`);
}

/**
 * The four scenarios, through a client's adapter:
 *   query(text, variables, fetchPolicy) -> { data, extensions } (extensions of the answer, as the client hands
 *     them over: Apollo Client has none for an answer from its own cache, urql those it kept with it)
 *   error(text, variables) -> errorFacts(...) of the first GraphQL error the client surfaced
 *   persisted(text, variables) -> { data, error } through the client with automatic persisted queries
 *   refresh(token) -> { data, extensions } of the refreshCache mutation
 *   cacheAndNetwork(text, variables) -> { results: [{ data, settled }], extensions } of a cache-and-network query
 * and the Recorder its fetch goes through.
 */
export async function scenarios(client, recorder) {
  const variables = {
    yield: { query: YIELD, variables: VARIABLES.yield, ...(await recorder.during(() => client.query(YIELD, VARIABLES.yield, "network-only"))) },
    chart: { query: CHART, variables: VARIABLES.chart, ...(await recorder.during(() => client.query(CHART, VARIABLES.chart, "network-only"))) },
  };
  const text = persistedQuery(client.name);
  const persisted = {
    query: text,
    first: await recorder.during(() => client.persisted(text, { codes: ["HSI"] })),
    second: await recorder.during(() => client.persisted(text, { codes: ["HSI"] })),
  };
  const errors = {
    badDate: await recorder.during(() => client.error(YIELD, { codes: ["HSI"], asOf: "not-a-date" })),
    unknownCode: await recorder.during(() => client.error(YIELD, { codes: ["NOPE"] })),
  };
  const { networkOnly, cacheAndNetwork } = REFRESH_VARIABLES;
  await client.query(YIELD, networkOnly, "network-only");
  await client.query(YIELD, cacheAndNetwork, "network-only");
  await sleep(1200); // so that the entries are over a second old before the refresh
  const before = {
    networkOnly: await client.query(YIELD, networkOnly, "network-only"),
    cacheAndNetwork: await client.query(YIELD, cacheAndNetwork, "network-only"),
  };
  const mutation = await recorder.during(() => client.refresh(adminToken()));
  const after = {
    networkOnly: await recorder.during(() => client.query(YIELD, networkOnly, "network-only")),
    cacheFirst: await recorder.during(() => client.query(YIELD, cacheAndNetwork, "cache-first")),
    cacheAndNetwork: await recorder.during(() => client.cacheAndNetwork(YIELD, cacheAndNetwork)),
  };
  return { variables, persisted, errors, refresh: { before, mutation, after } };
}

/** Run `main`, print its document; on failure print the error to stderr and exit 1. */
export function run(main) {
  main().then(
    (document) => {
      emit(document);
      process.exit(0);
    },
    (error) => {
      process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
      process.exit(1);
    },
  );
}
