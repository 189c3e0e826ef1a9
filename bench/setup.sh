#!/bin/sh
# What only the benchmark needs: flask and gunicorn in the venv, wrk (and redis-server) from apt.
# Usage: sh bench/setup.sh [PYTHON]   (default .venv/bin/python); quick when everything is there.
set -eu
PY=${1:-.venv/bin/python}
HERE=$(dirname "$0")

if ! "$PY" -c "import flask, gunicorn" 2>/dev/null; then
    "$PY" -m pip install --quiet -r "$HERE/requirements.txt"
fi

missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    echo "installing from apt:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
