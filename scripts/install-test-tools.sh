#!/usr/bin/env bash
# Install what the tests start for real, on a fresh Debian/Ubuntu machine: Node (the example origin and the
# official SDK), nginx, Redis, Chromium, Varnish and PostgreSQL, then the npm SDK pinned by tests/sdk.
# As root it installs the missing ones with apt-get; otherwise it prints the exact command to run and stops.
# It starts no service: the tests run their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null; }

missing=()
have node || missing+=(nodejs)
have npm || missing+=(npm)
have nginx || missing+=(nginx-light)
have redis-server || missing+=(redis-server)
have chromium || missing+=(chromium)
have varnishd || missing+=(varnish)
have initdb || missing+=(postgresql)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-test-tools: missing system tools; run as root:" >&2
        echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "==> apt-get install ${missing[*]}"
    # Debian's packages would start system nginx/redis/varnish/postgresql services: policy-rc.d (exit 101 =
    # "action forbidden") keeps them stopped, so nothing is left running and nothing must be killed afterwards.
    policy=/usr/sbin/policy-rc.d
    placed_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed_policy=1
    fi
    trap '[ "$placed_policy" = 1 ] && rm -f "$policy"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The official browser/Node SDK, exactly as pinned by tests/sdk/package-lock.json.
if [ ! -d tests/sdk/node_modules/@contentstack/personalize-edge-sdk ] \
    || [ tests/sdk/package-lock.json -nt tests/sdk/node_modules/.package-lock.json ]; then
    echo "==> npm ci --prefix tests/sdk"
    npm ci --prefix tests/sdk --no-audit --no-fund
fi
