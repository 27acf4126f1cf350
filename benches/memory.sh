#!/usr/bin/env bash
# Memory side by side: RSS of letta-proxy and nginx idle, holding N open keep-alive
# client connections (idle after one GET each), and busy under wrk with N connections.
#
#   benches/memory.sh            # N = 1,000 and 10,000 (~3 min)
#
# Uses the shared harness's backends and nginx config (../shared/bench, or BENCH_DIR);
# every measurement starts a fresh proxy process, pinned like benches/load.sh.
# Needs nginx, wrk, python3; ulimit -n must allow 2 x N + a few hundred.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${BENCH_DIR:-$ROOT/../shared/bench}
COUNTS=${COUNTS:-"1000 10000"}
[ -x "$SHARED/run.sh" ] || { echo "harness not found at $SHARED (set BENCH_DIR)" >&2; exit 1; }
for tool in nginx wrk python3; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ ! -w "$SHARED" ]; then
  WORK=/tmp/letta-proxy-bench-harness
  [ -x "$WORK/run.sh" ] || { rm -rf "$WORK"; cp -r "$SHARED" "$WORK"; chmod -R u+w "$WORK"; }
  SHARED=$WORK
fi
BE=$SHARED/backend/target/release/backend
[ -x "$BE" ] || (cd "$SHARED/backend" && cargo build --release -q)
(cd "$ROOT" && cargo build --release --bin letta-proxy)
BIN=$ROOT/target/release/letta-proxy
TMP=$(mktemp -d /tmp/letta-proxy-memory.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cat > "$TMP/ours.toml" <<TOML
[server]
listen = "127.0.0.1:18100"
max_connections = 20000
[balancer]
strategy = "round_robin"
[[backends]]
name = "be1"
url = "http://127.0.0.1:18081"
[[backends]]
name = "be2"
url = "http://127.0.0.1:18082"
[log]
access_log = false
level = "warn"
[cache]
enabled = false
TOML
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"

taskset -c 0 "$BE" --port 18081 --name be1 >/dev/null 2>&1 & PIDS+=($!)
taskset -c 0 "$BE" --port 18082 --name be2 >/dev/null 2>&1 & PIDS+=($!)

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' /proc/$1/status; }

# start TARGET -> sets PID (the process that serves: nginx's worker) and PORT
start() {
  case $1 in
    ours) taskset -c 1 "$BIN" --config "$TMP/ours.toml" >/dev/null 2>&1 & PID=$!; PIDS+=($PID); PORT=18100 ;;
    nginx) taskset -c 1 nginx -p "$TMP/nginx" -c "$SHARED/peers/nginx.conf" >/dev/null 2>&1 & PIDS+=($!); PORT=18090
           wait_port $PORT; PID=$(pgrep -P "$(cat "$TMP/nginx/nginx.pid")" -f "nginx: worker" | head -1) ;;
  esac
  wait_port $PORT
}
stop() { if [ "$1" = nginx ]; then nginx -p "$TMP/nginx" -c "$SHARED/peers/nginx.conf" -s stop 2>/dev/null || true; else kill "$PID"; fi; sleep 1; }

echo "| target | connections | RSS idle MiB | RSS holding N idle connections MiB | per connection KiB | RSS busy (wrk, N connections) MiB |"
echo "|---|---|---|---|---|---|"
for n in $COUNTS; do
  for t in nginx ours; do
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
