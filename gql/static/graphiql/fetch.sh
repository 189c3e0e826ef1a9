#!/bin/sh
# Fetches GraphiQL's browser files from the npm registry by exact version into this folder, and checks them:
# each package tarball against the registry integrity pinned below, each file taken from it against SHA256SUMS.
#
#   gql/static/graphiql/fetch.sh           fetch, check, write the files here
#   gql/static/graphiql/fetch.sh --check   fetch, check, and compare with the files here; writes nothing
#   gql/static/graphiql/fetch.sh --update  after changing a version below: fetch, check the tarballs only,
#                                          write the files and a new SHA256SUMS (review the diff)
#
# A new version: its integrity is `npm view PACKAGE@VERSION dist.integrity`; the file names carry the version,
# so graphiql.html and README.md here change with it. Needs npm (and so node), tar and sha256sum.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-write}
case $mode in write | --check | --update) ;; *) echo "usage: $0 [--check | --update]" >&2; exit 2 ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/fetch-graphiql.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=$work/out
mkdir "$out"

# take PACKAGE@VERSION INTEGRITY FILE-IN-PACKAGE:NAME-HERE...
take() {
    spec=$1 integrity=$2
    shift 2
    dir=$(mktemp -d "$work/pack.XXXXXX")
    # npm checks the download against the registry's own integrity too; the pin says it is the one reviewed.
    (cd "$dir" && npm pack --silent --ignore-scripts "$spec" >/dev/null)
    tgz=$(ls "$dir"/*.tgz)
    got=sha512-$(node -e 'const c = require("crypto"), fs = require("fs");
        process.stdout.write(c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tgz")
    if [ "$got" != "$integrity" ]; then
        echo "fetch.sh: $spec: the tarball is $got, not the pinned $integrity" >&2
        exit 1
    fi
    tar -xzf "$tgz" -C "$dir"
    for pair in "$@"; do
        cp "$dir/package/${pair%%:*}" "$out/${pair#*:}"
    done
    echo "fetch.sh: $spec ok"
}

take react@18.3.1 \
    sha512-wS+hAgJShR0KhEvPJArfuPVN1+Hz1t0Y6n5jLrGQbkb4urgPE/0Rve+1kMB1v/oWgHgm4WIcV+i7F2pTVj+2iQ== \
    umd/react.production.min.js:react-18.3.1.production.min.js LICENSE:LICENSE.react
take react-dom@18.3.1 \
    sha512-5m4nQKp+rZRb09LNH59GM4BxTh9251/ylbKIbpe7TpGxfJ+9kv6BLkLBXIjjspbgbnIBNqlI23tRnTWT0snUIw== \
    umd/react-dom.production.min.js:react-dom-18.3.1.production.min.js LICENSE:LICENSE.react-dom
take graphiql@3.8.3 \
    sha512-cuPDYtXVKV86Pu5PHBX642Odi/uVEE2y1Jxq5rGO/Qy1G2lRp7ZZ7a/T30RzxhuLSWo9zUbzq0P3U49//H0Ugw== \
    graphiql.min.js:graphiql-3.8.3.min.js graphiql.min.css:graphiql-3.8.3.min.css LICENSE:LICENSE.graphiql
take @graphiql/plugin-explorer@3.2.5 \
    sha512-gM9UwD0PcOHe+XrRY2YMIV4pUrDIfV0YBQ5kQUZxk0BuVvZO9xk06XFv5plBKDAwtxbsuq+nET4i9FJCiYev2g== \
    dist/index.umd.js:plugin-explorer-3.2.5.umd.js dist/style.css:plugin-explorer-3.2.5.css
# The explorer plugin's bundle includes graphiql-explorer; its package ships no LICENSE (LICENSE.plugin-explorer
# here is the graphql/graphiql repository's, see README.md), graphiql-explorer's own is taken from its package.
take graphiql-explorer@0.9.0 \
    sha512-fZC/wsuatqiQDO2otchxriFO0LaWIo/ovF/CQJ1yOudmY0P7pzDiP+l9CEHUiWbizk3e99x6DQG4XG1VxA+d6A== \
    LICENSE:LICENSE.graphiql-explorer

if [ "$mode" = --update ]; then
    cp "$out"/* "$here"/
    (cd "$here" && sha256sum -- $(ls "$out") LICENSE.plugin-explorer) >"$work/SHA256SUMS"
    mv "$work/SHA256SUMS" "$here/SHA256SUMS"
    echo "fetch.sh: wrote $(ls "$out" | wc -l) files and SHA256SUMS"
    exit 0
fi

# Every file taken is listed, and matches (LICENSE.plugin-explorer is not fetched: --ignore-missing).
for name in $(ls "$out"); do
    grep -q "  $name\$" "$here/SHA256SUMS" || { echo "fetch.sh: $name is not in SHA256SUMS" >&2; exit 1; }
done
(cd "$out" && sha256sum --quiet --ignore-missing -c "$here/SHA256SUMS")

if [ "$mode" = --check ]; then
    for name in $(ls "$out"); do
        cmp -s "$out/$name" "$here/$name" || { echo "fetch.sh: $here/$name differs from the registry's" >&2; exit 1; }
    done
    (cd "$here" && sha256sum --quiet -c SHA256SUMS)
    echo "fetch.sh: the files here are the registry's"
else
    cp "$out"/* "$here"/
    echo "fetch.sh: wrote $(ls "$out" | wc -l) files"
fi
