#!/usr/bin/env bash
# Memory side by side: RSS of letta-proxy and nginx idle, holding N open keep-alive
# client connections (idle after one GET each), and busy under wrk with N connections.
#
#   benches/memory.sh            # N = 1,000 and 10,000 (~3 min)
#   benches/memory.sh quick      # N = 1,000 only (~1 min)
#   FLOOR=1 benches/memory.sh    # also examples/hyper_floor.rs: a forwarder on hyper and
#                                # nothing else, the floor under our memory on hyper
#
# Uses the harness's backends and nginx config (benches/harness); every measurement
# starts a fresh proxy process, pinned like benches/load.sh.
# Needs nginx, wrk (installed when absent), python3; ulimit -n must allow 2 x N + a few hundred.
set -euo pipefail
source "$(dirname "$0")/common.sh"
case ${1:-} in
  "") COUNTS=${COUNTS:-"1000 10000"} ;;
  quick) COUNTS=${COUNTS:-1000} ;;
  *) echo "usage: $0 [quick]" >&2; exit 2 ;;
esac
need python3
install_tools nginx wrk
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
build_backend
build_proxy
TMP=$(mktemp -d /tmp/letta-proxy-memory.XXXX)
trap stop_pids EXIT

ours_config "$TMP/ours.toml" 18100 $'[cache]\nenabled = false'
TARGETS="nginx ours"
if [ -n "${FLOOR:-}" ]; then
  build_floor
  ours_config "$TMP/floor.toml" 18110
  TARGETS="$TARGETS hyper_floor"
fi
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"

start_backends

rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' /proc/$1/status; }

# start TARGET -> sets PID (the process that serves: nginx's worker) and PORT
start() {
  case $1 in
    ours) LETTA_PROXY__SERVER__MAX_CONNECTIONS=20000 taskset -c 1 "$BIN" --config "$TMP/ours.toml" >/dev/null 2>&1 &
          PID=$!; PIDS+=($PID); PORT=18100 ;;
    hyper_floor) taskset -c 1 "$FLOOR_BIN" --config "$TMP/floor.toml" >/dev/null 2>&1 &
          PID=$!; PIDS+=($PID); PORT=18110 ;;
    nginx) taskset -c 1 nginx -p "$TMP/nginx" -c "$HARNESS/peers/nginx.conf" >/dev/null 2>&1 & PIDS+=($!); PORT=18090
           wait_port $PORT; PID=$(pgrep -P "$(cat "$TMP/nginx/nginx.pid")" -f "nginx: worker" | head -1) ;;
  esac
  wait_port $PORT
}
stop() { if [ "$1" = nginx ]; then nginx -p "$TMP/nginx" -c "$HARNESS/peers/nginx.conf" -s stop 2>/dev/null || true; else kill "$PID"; fi; sleep 1; }

echo "| target | connections | RSS idle MiB | RSS holding N idle connections MiB | per connection KiB | RSS busy (wrk, N connections) MiB |"
echo "|---|---|---|---|---|---|"
for n in $COUNTS; do
  for t in $TARGETS; do
    start $t
    idle=$(rss "$PID")
    held=$(python3 "$ROOT/benches/memory.py" $PORT "$n" "$PID")
    stop $t
    start $t
    timeout 30 taskset -c 0 wrk -t1 -c"$n" -d8s --timeout 5s "http://127.0.0.1:$PORT/v1/agents/agent-00000000-0000-4000-8000-000000000001" >/dev/null 2>&1 &
    load=$!
    sleep 6; busy=$(rss "$PID"); wait $load || true
    stop $t
    python3 - "$t" "$n" "$idle" "$held" "$busy" <<'PY'
import json, sys
t, n, idle, held, busy = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
per = (held["rss_held_mib"] - held["rss_before_mib"]) * 1024 / max(held["held"], 1)
print(f"| {t} | {held['held']:,} | {idle} | {held['rss_held_mib']} | {per:.1f} | {busy} |")
PY
  done
done
