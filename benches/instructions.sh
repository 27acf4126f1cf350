#!/usr/bin/env bash
# User-space instructions per proxied GET, counted by valgrind's callgrind: the
# same binary and load give the same count whatever else the machine does, so
# a change of a few percent shows where the timed benches (cpu.sh, load.sh)
# cannot separate it from noise. Kernel time is not counted (see cpu.sh), and
# `rep movs` copies count per iteration, so large memcpys weigh more here
# than in time.
#
#   benches/instructions.sh                  # this build; ~1 min
#   BASELINE_BIN=/path/to/letta-proxy benches/instructions.sh
#                                            # this build and another, alternated
#   ROUNDS=2 CONNS=16 DURATION=5             # the defaults
#   CACHE=hits benches/instructions.sh       # answers from the in-memory cache instead
#   REQUEST=post benches/instructions.sh     # a 1 KB POST to the agent's messages (an agent
#                                            # turn) instead of the GET; with CACHE=hits, the
#                                            # cache layer's write path (plan, hold, invalidate)
#   FLOOR=1 NGINX=1 benches/instructions.sh  # beside examples/hyper_floor.rs (hyper and
#                                            # tokio forwarding, nothing else; with CACHE=hits,
#                                            # answering from memory) and nginx
#
# Each round starts the proxy under callgrind (no write ordering; cache off:
# the plain proxied path, or with CACHE=hits on, every request after the
# warm-up a hit), warms it, zeroes the counters, runs wrk for DURATION seconds
# and divides the instructions by the requests served.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-2}; CONNS=${CONNS:-16}; DURATION=${DURATION:-5}; CACHE=${CACHE:-off}
REQUEST=${REQUEST:-get}
install_tools valgrind wrk
[ -n "${NGINX:-}" ] && install_tools nginx
[ -n "${FLOOR:-}" ] && install_tools curl
build_backend
build_proxy
TMP=$(mktemp -d /tmp/letta-proxy-instructions.XXXX)
trap stop_pids EXIT
URL_PATH=/v1/agents/agent-00000000-0000-4000-8000-000000000001
case $REQUEST in
  get) LUA=get.lua ;;
  post) LUA=post1k.lua; URL_PATH=$URL_PATH/messages ;;
  *) echo "REQUEST=get or REQUEST=post" >&2; exit 2 ;;
esac
[ -n "${FLOOR:-}${NGINX:-}" ] && [ "$REQUEST" = post ] && { echo "FLOOR and NGINX rows are GETs" >&2; exit 2; }
export BENCH_LUA_DIR=$HARNESS/lua
case $CACHE in
  off) CACHE_ENABLED=false ;;
  hits) CACHE_ENABLED=true ;;
  *) echo "CACHE=off or CACHE=hits" >&2; exit 2 ;;
esac
ours_config "$TMP/ours.toml" 18110 $'[limits]\nserialize_agent_writes = false\n[cache]\nenabled = '$CACHE_ENABLED

start_backends
wait_port 18081; wait_port 18082

# count NAME PORT CMD... -> one table row: CMD, listening on PORT, run under callgrind
count() {
  local name=$1 port=$2 out pid n ir file
  shift 2
  out=$TMP/$name.$RANDOM
  taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$TMP/valgrind.log" &
  pid=$!
  wait_port "$port" 60   # valgrind starts it slowly
  timeout 60 taskset -c 0 wrk -t1 -c"$CONNS" -d3s -s "$BENCH_LUA_DIR/$LUA" "http://127.0.0.1:$port$URL_PATH" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  n=$(timeout $((DURATION + 30)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$BENCH_LUA_DIR/$LUA" \
      "http://127.0.0.1:$port$URL_PATH" | grep '^JSON:' | cut -c6- \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # The dump (`.1`) holds what ran between zeroing and dumping; the file
  # written at exit holds only what came after.
  file=$out.1
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
  echo "| $name | $n | $ir | $((ir / n)) |"
}

if [ -n "${NGINX:-}" ]; then
  # The harness's nginx in one process (callgrind follows one): its proxied
  # server on 18090, its proxy_cache server on 18095 for CACHE=hits.
  mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
  sed 's/^master_process on;/master_process off;/' "$HARNESS/peers/nginx.conf" > "$TMP/nginx.conf"
  NGINX_PORT=18090; [ "$CACHE" = hits ] && NGINX_PORT=18095
fi
if [ -n "${FLOOR:-}" ]; then
  build_floor
  AGENT_BYTES=$(agent_bytes "$URL_PATH")
fi

echo "| build | requests | instructions | instructions/request |"
echo "|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  count ours 18110 "$BIN" --config "$TMP/ours.toml"
  [ -n "${BASELINE_BIN:-}" ] && count base 18110 "$BASELINE_BIN" --config "$TMP/ours.toml"
  if [ -n "${FLOOR:-}" ]; then
    if [ "$CACHE" = hits ]; then # an answer from memory, the size of the stand-in's agent
      count hyper_floor 18110 "$FLOOR_BIN" --config "$TMP/ours.toml" --static "$AGENT_BYTES"
    else
      count hyper_floor 18110 "$FLOOR_BIN" --config "$TMP/ours.toml"
    fi
  fi
  [ -n "${NGINX:-}" ] && count nginx "$NGINX_PORT" nginx -p "$TMP/nginx" -c "$TMP/nginx.conf"
done
