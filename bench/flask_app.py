"""The original design: a Flask view returning a cached dict from Redis, served by gunicorn with threads.

As the replaced view did: redis-py `get`, `json.loads`, `jsonify`. Keyed by the SHA-256 of the request
body, so one app serves every benchmarked query:
`gunicorn -w 1 --threads 8 --chdir bench flask_app:app` with BENCH_REDIS_URL set.
"""

from __future__ import annotations

import hashlib
import json
import os

import redis
from flask import Flask, jsonify, request

KEY_PREFIX = "flask:"

app = Flask(__name__)
_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


def key_for(body: bytes) -> str:
    return KEY_PREFIX + hashlib.sha256(body).hexdigest()


@app.post("/graphql")
def graphql():
    cached = _redis.get(key_for(request.get_data()))
    if cached is None:
        return jsonify({"errors": [{"message": "not seeded"}]}), 404
    return jsonify(json.loads(cached))
