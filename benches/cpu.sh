#!/usr/bin/env bash
# Where a request's CPU goes: user and kernel microseconds per request for nginx and
# letta-proxy (cache off and cache hits; nginx's hits from its proxy_cache server, the
# harness's nginx-cache on 18095), each pinned to CPU 1 and saturated by wrk on
# CPU 0, from /proc/<pid>/stat before and after a run; then, with perf, the share of
# samples in the kernel, the proxy and libc, and the kernel's wake-up cost.
#
#   benches/cpu.sh                 # ~2 min; ROUNDS=3 DURATION=5
#   benches/cpu.sh quick           # ROUNDS=1 DURATION=2, for a smoke check (~30 s)
#   FLOOR=1 benches/cpu.sh         # also examples/hyper_floor.rs, forwarding (`floor`) and
#                                  # answering the agent's bytes from memory (`floor_static`):
#                                  # the CPU under a proxied GET and under a cache hit on hyper
#
# Uses the harness's backends, nginx config and wrk scripts (benches/harness).
set -euo pipefail
source "$(dirname "$0")/common.sh"
case ${1:-} in
  "") ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5} ;;
  quick) ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-2} ;;
  *) echo "usage: $0 [quick]" >&2; exit 2 ;;
esac
install_tools nginx wrk
[ -n "${FLOOR:-}" ] && install_tools curl
build_backend
build_proxy
[ -n "${FLOOR:-}" ] && build_floor
TMP=$(mktemp -d /tmp/letta-proxy-cpu.XXXX)
cleanup() {
  nginx -p "$TMP/nginx" -c "$HARNESS/peers/nginx.conf" -s stop 2>/dev/null || true
  stop_pids
}
trap cleanup EXIT
export BENCH_LUA_DIR=$HARNESS/lua
URL_PATH=/v1/agents/agent-00000000-0000-4000-8000-000000000001

NOLIMITS=$'[limits]\nserialize_agent_writes = false'
ours_config "$TMP/ours.toml" 18100 "$NOLIMITS"$'\n[cache]\nenabled = false'
ours_config "$TMP/ours-cache.toml" 18101 "$NOLIMITS"$'\n[cache]\nenabled = true'
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"

start_backends
taskset -c 1 nginx -p "$TMP/nginx" -c "$HARNESS/peers/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" --config "$TMP/ours.toml" >/dev/null 2>&1 & OURS=$!; PIDS+=($OURS)
taskset -c 1 "$BIN" --config "$TMP/ours-cache.toml" >/dev/null 2>&1 & CACHE=$!; PIDS+=($CACHE)
for port in 18081 18082 18090 18095 18100 18101; do wait_port $port; done
NGINX=$(pgrep -P "$(cat "$TMP/nginx/nginx.pid")" -f "nginx: worker" | head -1)
TARGETS="nginx:$NGINX:18090 ours:$OURS:18100 nginx_cache_hits:$NGINX:18095 ours_cache_hits:$CACHE:18101"
if [ -n "${FLOOR:-}" ]; then
  # The floor reads its listen address and backends from a config like ours.
  ours_config "$TMP/floor.toml" 18102 ""
  ours_config "$TMP/floor-static.toml" 18103 ""
  AGENT_BYTES=$(agent_bytes "$URL_PATH")
  taskset -c 1 "$FLOOR_BIN" --config "$TMP/floor.toml" >/dev/null 2>&1 & FLOORP=$!; PIDS+=($FLOORP)
  taskset -c 1 "$FLOOR_BIN" --config "$TMP/floor-static.toml" --static "$AGENT_BYTES" >/dev/null 2>&1 & STATIC=$!; PIDS+=($STATIC)
  wait_port 18102; wait_port 18103
  TARGETS="$TARGETS floor:$FLOORP:18102 floor_static:$STATIC:18103"
fi
HZ=$(getconf CLK_TCK)

# measure PID PORT -> "req/s user_us_per_req kernel_us_per_req"
measure() {
  local pid=$1 port=$2 u0 s0 u1 s1 out
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out=$(timeout $((DURATION + 10)) taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -s "$BENCH_LUA_DIR/get.lua" \
        "http://127.0.0.1:$port$URL_PATH" | grep '^JSON:' | cut -c6-)
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1]); n = r["requests"]; rps = r["rps"]; hz = int(sys.argv[6])
us = lambda t0, t1: (int(t1) - int(t0)) * 1e6 / hz / n
print(f"{rps:.0f} {us(sys.argv[2], sys.argv[3]):.2f} {us(sys.argv[4], sys.argv[5]):.2f}")
' "$out" "$u0" "$u1" "$s0" "$s1" "$HZ"
}

# Warm the caches (first GET is a miss) and the pools.
for t in $TARGETS; do
  port=${t##*:}
  timeout 10 taskset -c 0 wrk -t1 -c64 -d1s "http://127.0.0.1:$port$URL_PATH" >/dev/null
done

echo "| target | round | req/s | user µs/req | kernel µs/req | total µs/req |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    IFS=: read -r name pid port <<< "$t"
    read -r rps user sys < <(measure "$pid" "$port")
    echo "| $name | $round | $rps | $user | $sys | $(python3 -c "print(round($user + $sys, 2))") |"
  done
done

command -v perf >/dev/null || { echo "(perf not found: no sample breakdown)"; exit 0; }
echo
echo "perf (software clock, 2 s under the same load): share of samples"
echo
echo "| target | kernel | proxy binary | libc | wake-ups (_raw_spin_unlock_irqrestore) |"
echo "|---|---|---|---|---|"
for t in $TARGETS; do
  IFS=: read -r name pid port <<< "$t"
  timeout 20 taskset -c 0 wrk -t1 -c64 -d4s "http://127.0.0.1:$port$URL_PATH" >/dev/null &
  load=$!
  sleep 1
  perf record -q -F 1000 -p "$pid" -o "$TMP/$name.perf" -- sleep 2 >/dev/null 2>&1 || true
  wait $load || true
  dsos=$(perf report -q -i "$TMP/$name.perf" --sort dso 2>/dev/null)
  share() { echo "$dsos" | awk -v d="$1" '$2 ~ d {gsub("%","",$1); s+=$1} END {printf "%.1f %%", s}'; }
  wake=$(perf report -q -i "$TMP/$name.perf" --sort sym 2>/dev/null \
         | awk '/_raw_spin_unlock_irqrestore/ {gsub("%","",$1); s+=$1} END {printf "%.1f %%", s}')
  echo "| $name | $(share kernel) | $(share "nginx|$(basename "$BIN")|hyper_floor") | $(share libc) | $wake |"
done
