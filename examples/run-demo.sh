#!/usr/bin/env bash
# Start the bundled Node origin and edgeproxy in front of it, on the example rules (no Redis, no services).
#   examples/run-demo.sh              -> open http://127.0.0.1:8080/
# ORIGIN_PORT / PROXY_LISTEN override the ports; extra arguments go to `edgeproxy serve`.
# DEMO_NOW sets the proxy's clock (default 2026-11-28T12:00:00Z, Black Friday week, so the example project's
# campaign rules show on any date); DEMO_NOW= (empty) uses the real clock.
# examples/demo.toml turns on behavioural attributes (visit_count, checkout_views_7d, ...) for experiences 8 and 9.
set -euo pipefail
cd "$(dirname "$0")/.."
origin_port="${ORIGIN_PORT:-3000}"
listen="${PROXY_LISTEN:-127.0.0.1:8080}"
demo_now="${DEMO_NOW-2026-11-28T12:00:00Z}"
if ! command -v node >/dev/null 2>&1; then
    echo "run-demo: node is needed for the example origin (apt-get install nodejs, or any Node >= 18)" >&2
    exit 1
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$origin_port") 2>/dev/null; then
    echo "run-demo: port $origin_port is already taken, so the example origin cannot start there;" >&2
    echo "          stop what listens on it or pick another: ORIGIN_PORT=3001 examples/run-demo.sh" >&2
    exit 1
fi
listen_host="${listen%:*}"
listen_port="${listen##*:}"
if (exec 3<>"/dev/tcp/${listen_host:-127.0.0.1}/$listen_port") 2>/dev/null; then
    echo "run-demo: $listen is already taken, so edgeproxy cannot listen there;" >&2
    echo "          stop what listens on it or pick another: PROXY_LISTEN=127.0.0.1:8081 examples/run-demo.sh" >&2
    exit 1
fi
# A bad DEMO_NOW is named as such (edgeproxy itself would blame its --now); exit 3 = not an instant.
check_now='import sys
from edgeproxy.clock import parse_instant
try:
    parse_instant(sys.argv[1])
except ValueError:
    sys.exit(3)'
status=0
if [ -n "$demo_now" ]; then
    python3 -c "$check_now" "$demo_now" 2>/dev/null || status=$?
fi
if [ "$status" = 3 ]; then
    echo "run-demo: DEMO_NOW='$demo_now' is not an ISO-8601 instant, e.g. DEMO_NOW=2026-11-28T12:00:00Z (empty: the real clock)" >&2
    exit 1
fi
node examples/origin/server.js --port "$origin_port" &
origin_pid=$!
trap 'kill "$origin_pid" 2>/dev/null || true' EXIT INT TERM
# Serve only once our origin answers (never whatever else might be on the port).
for _ in $(seq 100); do
    if ! kill -0 "$origin_pid" 2>/dev/null; then
        echo "run-demo: the example origin exited before it listened on :$origin_port (see its error above)" >&2
        exit 1
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$origin_port") 2>/dev/null && break
    sleep 0.1
done
now_args=()
if [ -n "$demo_now" ]; then
    now_args=(--now "$demo_now")
fi
echo "run-demo: open http://$listen/ (origin on :$origin_port; clock: ${demo_now:-real time})"
echo "          try ?utm_campaign=bf, a phone User-Agent, or"
echo "          open /checkout twice, or come back after 30 minutes (examples/demo.toml counts visits), or"
echo "          curl -s http://$listen/echo | python3 -m json.tool   to see what the origin receives"
echo "          the dashboard: http://$listen/_edgeproxy/dashboard?token=demo"
edgeproxy serve --config examples/demo.toml --origin "http://127.0.0.1:$origin_port" --rules rules --listen "$listen" \
    --geoip tests/data/GeoIP2-City-Test.mmdb --ops-token "${DEMO_OPS_TOKEN:-demo}" "${now_args[@]}" "$@"
