// urql (@urql/core, no framework bindings) against the service: `node urql.mjs http://127.0.0.1:PORT`,
// with GQL_ADMIN_TOKEN set. Prints one JSON document (see scenarios() in common.mjs).
import { Client, cacheExchange, fetchExchange } from "@urql/core";
import { persistedExchange } from "@urql/exchange-persisted";
import { pipe, subscribe } from "wonka";

import { REFRESH as REFRESH_TEXT, Recorder, errorFacts, run, scenarios, serverUrl, sha256, version } from "./common.mjs";

run(async () => {
  const url = serverUrl();
  const recorder = new Recorder();
  // urql sends queries as GET when the URL is short enough ("within-url-limit", its default).
  const client = new Client({ url, fetch: recorder.fetch, exchanges: [cacheExchange, fetchExchange] });
  const persisted = new Client({
    url,
    fetch: recorder.fetch,
    exchanges: [
      cacheExchange,
      persistedExchange({ preferGetForPersistedQueries: true, generateHash: async (query) => sha256(query) }),
      fetchExchange,
    ],
  });
  const failed = (result) => (result.error ? String(result.error) : null);

  const adapter = {
    name: "urql",
    query: async (text, variables, requestPolicy) => {
      // urql calls them "cache-first" and "network-only" too (its requestPolicy).
      const result = await client.query(text, variables, { requestPolicy }).toPromise();
      if (result.error) throw result.error;
      return { data: result.data, extensions: result.extensions ?? null };
    },
    error: async (text, variables) => {
      const result = await client.query(text, variables, { requestPolicy: "network-only" }).toPromise();
      return result.error ? errorFacts(result.error.graphQLErrors[0], result.error.name) : errorFacts(null, "no error");
    },
    persisted: async (text, variables) => {
      const result = await persisted.query(text, variables, { requestPolicy: "network-only" }).toPromise();
      return { data: result.data ?? null, error: failed(result) };
    },
    refresh: async (token) => {
      const result = await client.mutation(REFRESH_TEXT, {}, { fetchOptions: { headers: { Authorization: `Bearer ${token}` } } }).toPromise();
      if (result.error) throw result.error;
      return { data: result.data, extensions: result.extensions ?? null };
    },
    cacheAndNetwork: (text, variables) =>
      new Promise((resolve, reject) => {
        // The cached result comes first, marked stale, then the network's.
        const results = [];
        let last = null;
        const { unsubscribe } = pipe(
          client.query(text, variables, { requestPolicy: "cache-and-network" }),
          subscribe((result) => {
            if (result.error) return reject(result.error);
            results.push({ data: result.data ?? null, settled: !result.stale });
            last = result;
            if (!result.stale) {
              setImmediate(() => unsubscribe());
              resolve({ results, extensions: last.extensions ?? null });
            }
          }),
        );
      }),
  };
  const seen = await scenarios(adapter, recorder);
  return { client: "urql", versions: { "@urql/core": version("@urql/core"), "@urql/exchange-persisted": version("@urql/exchange-persisted") }, ...seen };
});
