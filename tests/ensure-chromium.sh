#!/bin/sh
# tests/test_dashboard.py drives the system Chromium (Debian's package); Playwright downloads no browser here.
# Installs it when missing, with a CJK font so the indexes' Chinese names render in screenshots.
set -eu
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "ensure-chromium: /usr/bin/chromium is missing; installing Debian's chromium" >&2
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei
