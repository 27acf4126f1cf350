#!/usr/bin/env bash
# Proves the SSE probe detects buffering/delaying proxies (bounded: 5 probes x 3 s, ~20 s).
#  nginx :18096  gzip on text/event-stream  -> events held in the compressor => TTFB ~ whole stream
#  haproxy:18097 stock config (no http-no-delay) -> MSG_MORE holds small writes => TTFB ~200 ms
#  haproxy:18091 benchmark config (http-no-delay on stream backend) => TTFB ~1 ms
#  nginx :18090  benchmark config (proxy_buffering off on the stream location) => TTFB ~1 ms
# Needs nginx and haproxy (apt-get install -y nginx haproxy).
set -euo pipefail
B=$(cd "$(dirname "$0")" && pwd)
HARNESS_TARGET=${HARNESS_TARGET:-$(cd "$B/../.." && pwd)/target/bench-harness}
BIN=$HARNESS_TARGET/release
for tool in nginx haproxy; do command -v $tool >/dev/null || { echo "$tool not found (apt-get install -y nginx haproxy)" >&2; exit 1; }; done
cargo build --release -q --manifest-path "$B/backend/Cargo.toml" --target-dir "$HARNESS_TARGET"
mkdir -p /tmp/letta-proxy-bench; D=$(mktemp -d /tmp/letta-proxy-bench/validate.XXXX)
mkdir -p "$D/nginx/logs" "$D/nginx/tmp"; PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$D"' EXIT
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
wait_port() { for _ in $(seq 1 100); do port_busy "$1" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
for p in 18081 18082 18090 18091 18096 18097; do
  if port_busy $p; then echo "port $p already in use; stop whatever holds it first" >&2; exit 1; fi
done
taskset -c 0 "$BIN/backend" --port 18081 --name be1 >/dev/null 2>&1 & PIDS+=($!)
taskset -c 0 "$BIN/backend" --port 18082 --name be2 >/dev/null 2>&1 & PIDS+=($!)
taskset -c 1 nginx -p "$D/nginx" -c "$B/peers/nginx.conf" >"$D/nginx.out" 2>&1 & PIDS+=($!)
taskset -c 1 haproxy -db -f "$B/peers/haproxy.cfg" >"$D/haproxy.out" 2>&1 & PIDS+=($!)
for p in 18081 18082 18090 18091 18096 18097; do wait_port $p; done
Q='v1/agents/a1/messages/stream?events=10&interval_ms=50'
probe() { timeout 20 taskset -c 0 "$BIN/sseprobe" "$@" -c 32 -d 3; }
echo "nginx gzip (18096):     $(probe --gzip --url "http://127.0.0.1:18096/$Q")"
echo "haproxy stock (18097):  $(probe --url "http://127.0.0.1:18097/$Q")"
echo "haproxy bench (18091):  $(probe --url "http://127.0.0.1:18091/$Q")"
echo "nginx bench (18090):    $(probe --url "http://127.0.0.1:18090/$Q")"
echo "nginx no-gzip (18096):  $(probe --url "http://127.0.0.1:18096/$Q")"
