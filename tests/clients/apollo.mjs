// Apollo Client (no React: @apollo/client/core) against the service: `node apollo.mjs http://127.0.0.1:PORT`,
// with GQL_ADMIN_TOKEN set. Prints one JSON document (see scenarios() in common.mjs).
import { ApolloClient, ApolloLink, CombinedGraphQLErrors, HttpLink, InMemoryCache } from "@apollo/client/core";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { parse } from "graphql";
import { map } from "rxjs";

import { REFRESH as REFRESH_TEXT, Recorder, errorFacts, run, scenarios, serverUrl, sha256, version } from "./common.mjs";

run(async () => {
  const uri = serverUrl();
  const recorder = new Recorder();
  // Query results of Apollo Client carry no response extensions: a link hands over those of each answer.
  let captured = [];
  const capture = new ApolloLink((operation, forward) =>
    forward(operation).pipe(
      map((result) => {
        captured.push(result.extensions ?? null);
        return result;
      }),
    ),
  );
  const http = new HttpLink({ uri, fetch: recorder.fetch });
  const client = new ApolloClient({ link: ApolloLink.from([capture, http]), cache: new InMemoryCache() });
  const persisted = new ApolloClient({
    link: ApolloLink.from([new PersistedQueryLink({ sha256, useGETForHashedQueries: true }), http]),
    cache: new InMemoryCache(),
  });
  const documents = new Map();
  const doc = (text) => documents.get(text) ?? documents.set(text, parse(text)).get(text);
  // The extensions of the one network answer `step` got (null when it got none from the network).
  const withExtensions = async (step) => {
    captured = [];
    const result = await step();
    if (captured.length > 1) throw new Error(`expected at most one network answer, got ${captured.length}`);
    return { ...result, extensions: captured[0] ?? null };
  };

  const adapter = {
    name: "apollo",
    query: (text, variables, fetchPolicy) =>
      withExtensions(async () => ({ data: (await client.query({ query: doc(text), variables, fetchPolicy })).data })),
    error: async (text, variables) => {
      try {
        await client.query({ query: doc(text), variables, fetchPolicy: "network-only" });
      } catch (error) {
        // Apollo Client 4: GraphQL errors of an answer reject the query as one CombinedGraphQLErrors.
        return CombinedGraphQLErrors.is(error) ? errorFacts(error.errors[0], error.name) : errorFacts(null, String(error));
      }
      return errorFacts(null, "no error");
    },
    persisted: async (text, variables) => {
      const result = await persisted.query({ query: doc(text), variables, fetchPolicy: "network-only" });
      return { data: result.data, error: result.error ? String(result.error) : null };
    },
    refresh: (token) =>
      withExtensions(async () => ({
        data: (await client.mutate({ mutation: doc(REFRESH_TEXT), context: { headers: { Authorization: `Bearer ${token}` } } })).data,
      })),
    cacheAndNetwork: (text, variables) =>
      withExtensions(
        () =>
          new Promise((resolve, reject) => {
            const results = [];
            const subscription = client.watchQuery({ query: doc(text), variables, fetchPolicy: "cache-and-network" }).subscribe({
              next: (result) => {
                results.push({ data: result.data ?? null, settled: !result.loading });
                if (!result.loading) {
                  setImmediate(() => subscription.unsubscribe());
                  resolve({ results });
                }
              },
              error: reject,
            });
          }),
      ),
  };
  const seen = await scenarios(adapter, recorder);
  return { client: "apollo", versions: { "@apollo/client": version("@apollo/client"), graphql: version("graphql") }, ...seen };
});
