#!/usr/bin/env bash
# How cost grows with work, letta-proxy against nginx on the same core (issue 8, item 4):
#   client connections 64 / 1,024 / 10,000   (GET 2 KB, 2 backends)
#   backends           2 / 16 / 256          (GET 2 KB, 64 connections)
#   body size          1 KB / 64 KB / 1 MB   (POST echo: the same size comes back)
# One wrk run of DURATION s per cell after a 1 s warm-up; proxies pinned to CPU 1, load and
# backends to CPU 0. Prints a markdown table. Bounded: every run is under `timeout`.
#   benches/scaling.sh            (~6 min)
#   benches/scaling.sh quick      one 1 s run per cell, 10,000 connections and 256 backends left out (~1 min)
#   FLOOR=1 benches/scaling.sh    also the connections rows of examples/hyper_floor.rs (hyper
#                                 and tokio forwarding, nothing else) on tokio's multi-threaded
#                                 runtime and on its current-thread one, against the same nginx
#                                 runs: how much of the tail at many connections is the scheduler's
set -euo pipefail
source "$(dirname "$0")/common.sh"
case ${1:-} in
  "") DURATION=${DURATION:-5}; CONNS="64 1024 10000"; BACKENDS="16 256" ;;
  quick) DURATION=${DURATION:-1}; CONNS="64 1024"; BACKENDS="16" ;;
  *) echo "usage: $0 [quick]" >&2; exit 2 ;;
esac
install_tools nginx wrk
WORK=$(mktemp -d /tmp/letta-proxy-scaling.XXXX)
build_backend
build_proxy -q
[ -n "${FLOOR:-}" ] && build_floor -q
ulimit -n 20000 2>/dev/null || true
trap stop_pids EXIT INT TERM

# The largest backend count's stand-ins on 19000.. (only the first N are used by a given cell).
NMAX=$(printf '%s\n' 2 $BACKENDS | sort -n | tail -1)
for i in $(seq 0 $((NMAX - 1))); do
  taskset -c 0 "$BE" --port $((19000 + i)) --name "b$i" >/dev/null 2>&1 & PIDS+=($!)
done
wait_port $((19000 + NMAX - 1))

start_pair() { # nbackends -> starts nginx on 18300 and ours on 18301
  local n=$1 i
  mkdir -p "$WORK/ngx$n/logs" "$WORK/ngx$n/tmp"
  { echo "worker_processes 1; daemon off; pid nginx.pid; error_log logs/error.log warn; worker_rlimit_nofile 65536;"
    echo "events { worker_connections 16384; use epoll; }"
    echo "http { access_log off; tcp_nodelay on; keepalive_requests 1000000; client_body_buffer_size 2m; client_max_body_size 4m;"
    echo "  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;"
    echo "  upstream be { keepalive 1024; keepalive_requests 1000000;"
    for i in $(seq 0 $((n - 1))); do echo "    server 127.0.0.1:$((19000 + i));"; done
    echo "  }"
    echo "  proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host;"
    echo "  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_read_timeout 300s;"
    echo "  server { listen 127.0.0.1:18300 backlog=4096; location / { proxy_pass http://be; } } }"
  } > "$WORK/ngx$n/nginx.conf"
  { printf '[server]\nlisten = "127.0.0.1:18301"\nmax_body_size = "4MiB"\n[log]\naccess_log = false\nlevel = "warn"\n'
    printf '[limits]\nserialize_agent_writes = false\n[cache]\nenabled = false\n[health]\nenabled = false\n'
    for i in $(seq 0 $((n - 1))); do printf '[[backends]]\nname = "b%s"\nurl = "http://127.0.0.1:%s"\n' "$i" $((19000 + i)); done
  } > "$WORK/ours$n.toml"
  taskset -c 1 nginx -p "$WORK/ngx$n" -c "$WORK/ngx$n/nginx.conf" >/dev/null 2>&1 & NGX=$!
  taskset -c 1 "$BIN" --config "$WORK/ours$n.toml" >/dev/null 2>&1 & OURS=$!
  PIDS+=($NGX $OURS)
  wait_port 18300; wait_port 18301
  FLOORS=()
  if [ -n "${FLOOR:-}" ]; then # the same backends, on 18302 (multi-threaded) and 18303 (current-thread)
    sed 's/:18301"/:18302"/' "$WORK/ours$n.toml" > "$WORK/floor$n.toml"
    sed 's/:18301"/:18303"/' "$WORK/ours$n.toml" > "$WORK/floorct$n.toml"
    taskset -c 1 "$FLOOR_BIN" --config "$WORK/floor$n.toml" >/dev/null 2>&1 & FLOORS+=($!)
    taskset -c 1 "$FLOOR_BIN" --config "$WORK/floorct$n.toml" --current-thread >/dev/null 2>&1 & FLOORS+=($!)
    PIDS+=("${FLOORS[@]}")
    wait_port 18302; wait_port 18303
  fi
}
stop_pair() {
  kill $NGX $OURS "${FLOORS[@]}" 2>/dev/null || true
  wait $NGX $OURS "${FLOORS[@]}" 2>/dev/null || true
  sleep 0.3
}

post_lua() { # bytes -> lua file posting a body of that size
  local f=$WORK/post$1.lua
  printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %s)\nwrk.headers["Content-Type"] = "application/json"\n' "$1" > "$f"
  echo "$f"
}

run() { # port conns path [lua] -> "req/s p99ms"
  local port=$1 c=$2 path=$3 lua=${4:-} args=()
  [ -n "$lua" ] && args=(-s "$lua")
  timeout $((DURATION + 30)) taskset -c 0 wrk -t1 -c"$c" -d1s --timeout 10s "${args[@]}" "http://127.0.0.1:$port$path" >/dev/null 2>&1 || true
  timeout $((DURATION + 30)) taskset -c 0 wrk -t1 -c"$c" -d"${DURATION}s" --timeout 10s --latency "${args[@]}" "http://127.0.0.1:$port$path" 2>&1 \
    | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p=$2} END {
        v=p+0; if (p ~ /us$/) v=v/1000; else if (p ~ /ms$/) v=v; else if (p ~ /s$/) v=v*1000;
        printf "%s %.2f", rps, v }'
}

GET=/v1/agents/agent-00000000-0000-4000-8000-000000000001
POST=/v1/agents/agent-00000000-0000-4000-8000-000000000001/messages
echo "| dimension | value | nginx req/s | nginx p99 ms | ours req/s | ours p99 ms | ours ÷ nginx |"
echo "|---|---|---|---|---|---|---|"
row() { # dimension value nginx-result ours-result
  read -r nr np <<<"$3"; read -r orps op <<<"$4"
  awk -v d="$1" -v v="$2" -v nr="$nr" -v np="$np" -v o="$orps" -v op="$op" \
    'BEGIN { printf "| %s | %s | %\047.0f | %s | %\047.0f | %s | %.2f |\n", d, v, nr, np, o, op, (nr > 0 ? o / nr : 0) }'
}
start_pair 2
for c in $CONNS; do
  nginx=$(run 18300 $c $GET)
  row connections "$c" "$nginx" "$(run 18301 $c $GET)"
  if [ -n "${FLOOR:-}" ]; then # in the "ours" columns
    row "connections: hyper floor" "$c" "$nginx" "$(run 18302 $c $GET)"
    row "connections: hyper floor, current-thread runtime" "$c" "$nginx" "$(run 18303 $c $GET)"
  fi
done
for b in 1024 65536 1048576; do
  l=$(post_lua $b); c=64; [ $b -ge 1048576 ] && c=16
  row "POST echo body (conns)" "$b B ($c)" "$(run 18300 $c $POST "$l")" "$(run 18301 $c $POST "$l")"
done
stop_pair
for n in $BACKENDS; do
  start_pair $n
  row backends "$n" "$(run 18300 64 $GET)" "$(run 18301 64 $GET)"
  stop_pair
done
