# Varnish 7.1 in front of the service, with vmod xkey (Debian: apt-get install varnish varnish-modules).
#
#   varnishd -a :6081 -f /etc/varnish/varnish.vcl -s malloc,256m
#
# Edit the backend below to where the service listens (`gql serve --host --port`), and set on the service
#   GQL_PURGE_URLS=http://127.0.0.1:6081/
# so that refreshCache and new data versions purge what changed (docs/caching.md, "Downstream caches").
#
# - GET (and HEAD) /graphql: cached, one object per URL and Accept-Encoding (the service says Vary:
#   Accept-Encoding; Varnish keeps a gzip and a plain variant), tagged with the answer's Surrogate-Key.
# - An answer that says `no-cache` (the service's default) is kept only for revalidation: every request asks the
#   service with If-None-Match and gets a 304 while the answer is unchanged (the body is sent once).
# - An answer with s-maxage (GQL_HTTP_SHARED_MAX_AGE) is served from here for that long (less its Age), then
#   revalidated the same way; only a purge makes it fresh sooner.
# - PURGE (or BAN) with `xkey-purge: <keys>` (or `Surrogate-Key: <keys>`), from the purgers ACL only: drops every
#   object tagged with any of the keys.
# - Everything else (POST: mutations and queries sent with POST, /healthz, /metrics, the dashboard) is passed.
vcl 4.1;

import xkey;

backend default {
    .host = "127.0.0.1";
    .port = "8000";
}

# Who may purge: the service's hosts. Purging is cheap for them and a nuisance from anyone else.
acl purgers {
    "localhost";
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE" || req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.xkey-purge) {
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
        } elsif (req.http.Surrogate-Key) {
            set req.http.n-gone = xkey.purge(req.http.Surrogate-Key);
        } else {
            return (synth(400, "Name the surrogate keys to purge in an xkey-purge header"));
        }
        return (synth(200, "Purged " + req.http.n-gone + " objects"));
    }
    if ((req.method == "GET" || req.method == "HEAD") && req.url ~ "^/graphql(\?|$)") {
        if (req.http.Authorization) {
            return (pass);  # an answer asked for with credentials is the asker's own
        }
        unset req.http.Cookie;  # the API uses none, and the builtin VCL would pass every request with one
        return (hash);
    }
    return (pass);
}

sub vcl_backend_response {
    if (bereq.url ~ "^/graphql(\?|$)" && beresp.http.ETag && beresp.http.Cache-Control ~ "(?i)\bpublic\b") {
        # vmod xkey reads the keys from the xkey header: the service's Surrogate-Key (space-separated).
        set beresp.http.xkey = beresp.http.Surrogate-Key;
        # Kept after it stops being fresh so that the next fetch is conditional (If-None-Match: a 304).
        set beresp.keep = 1d;
        if (beresp.http.Cache-Control ~ "(?i)\bno-cache\b" || beresp.ttl <= 0s) {
            # Served without asking the service only to requests that waited for this very fetch. Not 0s: Varnish
            # skips an object of TTL 0 at lookup, which would leave nothing to revalidate (a full fetch each time);
            # and the builtin VCL would make it uncacheable instead.
            set beresp.ttl = 0.001s;
            set beresp.grace = 0s;
        }
        if (beresp.was_304) {
            set beresp.http.X-Cache = "REVALIDATED";
        } else {
            set beresp.http.X-Cache = "MISS";
        }
        return (deliver);
    }
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } elsif (!resp.http.X-Cache) {
        set resp.http.X-Cache = "PASS";
    }
    unset resp.http.xkey;
}
