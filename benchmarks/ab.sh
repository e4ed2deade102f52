#!/usr/bin/env bash
# Two edgeproxy trees against one origin in the same run, interleaved, for a before/after of a change:
# each server pinned to core 1, wrk and a static nginx origin (5 KB page) on core 0, 20,000 rotating returning
# visitors with 4 User-Agents (as ../shared/bench/versus.sh), and the plain aiohttp pass-through as the yardstick.
#   benchmarks/ab.sh pages|hits OLD_TREE [ROUNDS]      (OLD_TREE: a checkout, e.g. `git worktree add /tmp/old REV`)
# OLD_ARGS / NEW_ARGS: extra `serve` flags for each side, e.g. the same tree (OLD_TREE=.) with a setting off and on.
# Run from the project root with the new tree installed in the active venv. Prints each round and the medians:
# req/s and, steadier on a shared machine, the CPU each request cost the server (/proc/PID/stat).
# TOGETHER=1: both trees are loaded at once, each by its own wrk, sharing core 1: a slower host slows both alike,
# so new/old is the ratio of what a request costs each, steady even when the host's speed varies from one second
# to the next (req/s are then each about half of a run alone; the pass-through still runs alone).
set -euo pipefail
mode=${1:?pages or hits}; old=$(readlink -f "${2:?old tree}"); rounds=${3:-4}; rules=$(readlink -f rules)
export PATH=$PATH:/usr/sbin
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
d=$(mktemp -d); chmod 755 "$d"; pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
op=$(port); np=$(port); xp=$(port); cp=$(port)
python3 -c "print('<html><body>' + 'x'*5000 + '</body></html>')" > "$d/index.html"
cc=""; [ "$mode" = hits ] && cc='add_header Cache-Control "public, s-maxage=3600";'
cat > "$d/origin.conf" <<NG
worker_processes 1; pid $d/origin.pid; error_log $d/origin.err; daemon off;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$op; root $d; location / { default_type text/html; $cc try_files /index.html =404; } } }
NG
cat > "$d/visitors.lua" <<LUA
local uas = {"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"}
local i = 0
request = function()
  i = i + 1
  local v = (i * 7919) % ${VISITORS:-20000}
  return wrk.format("GET", "/page", {["User-Agent"] = uas[v % 4 + 1], ["Cookie"] = "cs-personalize-user-uid=visitor-" .. v})
end
LUA
taskset -c 0 nginx -c "$d/origin.conf" & pids+=($!)
(cd "$d" && PYTHONPATH="$old" exec taskset -c 1 python -m edgeproxy.cli serve --origin "http://127.0.0.1:$op" --rules "$rules" --listen "127.0.0.1:$xp" ${OLD_ARGS:-} >"$d/old.log" 2>&1) & pids+=($!); opid=$!
mkdir -p "$d/new"
(cd "$d/new" && exec taskset -c 1 python -m edgeproxy.cli serve --origin "http://127.0.0.1:$op" --rules "$rules" --listen "127.0.0.1:$np" ${NEW_ARGS:-} >"$d/new.log" 2>&1) & pids+=($!); npid=$!
taskset -c 1 python "$(dirname "$0")/passthrough.py" --origin "http://127.0.0.1:$op" --listen "127.0.0.1:$cp" >/dev/null 2>&1 & pids+=($!)
for p in $op $xp $np $cp; do wait_port "$p"; done
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }   # the process's user+system CPU, in clock ticks
# One wrk run against port $1; prints "req/s CPU-µs-per-request" ($2: the server's pid, or 0 not to measure CPU).
rps() {
  local c0=0 c1=0 out
  [ "$2" != 0 ] && c0=$(cpu "$2")
  out=$(taskset -c 0 wrk -t1 -c32 -d"${DUR:-5}"s -s "$d/visitors.lua" "http://127.0.0.1:$1/")
  [ "$2" != 0 ] && c1=$(cpu "$2")
  echo "$out" | awk -v ticks="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
    '/requests in/ {n=$1} /Requests\/sec/ {r=$2} END {printf "%s %.1f\n", r, ticks * 1e6 / hz / n}'
}
for p in $xp $np $cp; do rps "$p" 0 >/dev/null; done   # warm up (and fill the caches)
r=()
for round in $(seq 1 "$rounds"); do
  # The order alternates (old first, then new first), so that neither tree always runs right after the other.
  if [ -n "${TOGETHER:-}" ]; then
    rps "$xp" "$opid" >"$d/old.rps" & w1=$!; rps "$np" "$npid" >"$d/new.rps" & w2=$!
    wait "$w1" "$w2"; o=$(cat "$d/old.rps"); n=$(cat "$d/new.rps")
  elif (( round % 2 )); then o=$(rps "$xp" "$opid"); n=$(rps "$np" "$npid"); else n=$(rps "$np" "$npid"); o=$(rps "$xp" "$opid"); fi
  b=$(rps "$cp" 0)
  echo "round $round: old ${o% *} new ${n% *} pass-through ${b% *} req/s; CPU per request old ${o#* } new ${n#* } µs" >&2
  r+=(${o% *} ${n% *} ${b% *} ${o#* } ${n#* })
done
# CPU per request is the steadier figure on a shared machine: req/s moves with whatever else runs, the CPU a
# request costs the server much less.
python3 - "$mode" "${r[@]}" <<'PY'
import statistics, sys
mode, v = sys.argv[1], list(map(float, sys.argv[2:]))
old, new, base, old_cpu, new_cpu = v[0::5], v[1::5], v[2::5], v[3::5], v[4::5]
ro = statistics.median(o / b for o, b in zip(old, base)); rn = statistics.median(n / b for n, b in zip(new, base))
print(f"{mode}: old {statistics.median(old):.0f} req/s ({ro:.2f}x pass-through) | new {statistics.median(new):.0f} req/s "
      f"({rn:.2f}x) | new/old {statistics.median(n / o for n, o in zip(new, old)):.3f} | pass-through {statistics.median(base):.0f}")
print(f"CPU per request: old {statistics.median(old_cpu):.1f} µs | new {statistics.median(new_cpu):.1f} µs | "
      f"old/new {statistics.median(o / n for o, n in zip(old_cpu, new_cpu)):.3f} (above 1: new is cheaper)")
PY
