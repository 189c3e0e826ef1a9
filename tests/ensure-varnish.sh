#!/bin/sh
# tests/test_downstream.py runs a real Varnish (Debian's 7.1) with vmod xkey (varnish-modules) in front of the service,
# with deploy/varnish.vcl. Installs both when varnishd or the xkey vmod is missing; the test fails without them.
set -eu
VMOD_DIR=$(ls -d /usr/lib/*/varnish/vmods 2>/dev/null | head -n 1 || true)
if command -v varnishd >/dev/null 2>&1 && [ -n "$VMOD_DIR" ] && [ -e "$VMOD_DIR/libvmod_xkey.so" ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "ensure-varnish: varnishd or vmod xkey is missing; installing Debian's varnish and varnish-modules" >&2
$SUDO apt-get update -qq
# No service start during the install: the test starts its own varnishd on a free port.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends varnish varnish-modules
