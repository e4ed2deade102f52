#!/usr/bin/env bash
# Start the bundled Node origin and edgeproxy in front of it, on the example rules (no Redis, no services).
#   examples/run-demo.sh              -> open http://127.0.0.1:8080/
# ORIGIN_PORT / PROXY_LISTEN override the ports; extra arguments go to `edgeproxy serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
origin_port="${ORIGIN_PORT:-3000}"
listen="${PROXY_LISTEN:-127.0.0.1:8080}"
if ! command -v node >/dev/null 2>&1; then
    echo "run-demo: node is needed for the example origin (apt-get install nodejs, or any Node >= 18)" >&2
    exit 1
fi
node examples/origin/server.js --port "$origin_port" &
origin_pid=$!
trap 'kill "$origin_pid" 2>/dev/null || true' EXIT INT TERM
echo "run-demo: open http://$listen/ (origin on :$origin_port); try ?utm_campaign=bf, a phone User-Agent, or"
echo "          curl -s http://$listen/echo | python3 -m json.tool   to see what the origin receives"
edgeproxy serve --origin "http://127.0.0.1:$origin_port" --rules rules --listen "$listen" \
    --geoip tests/data/GeoIP2-City-Test.mmdb "$@"
