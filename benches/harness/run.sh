#!/usr/bin/env bash
# Side-by-side reverse-proxy benchmark on 127.0.0.1 (method, ports and caveats: README.md).
#
# usage: run.sh [TARGET...]          default targets: direct nginx haproxy
#   TARGET is one of
#     direct        the fake Letta backend be1 (127.0.0.1:18081), no proxy
#     nginx         nginx round-robin   (127.0.0.1:18090)   nginx-lc   least_conn (18093)
#     nginx-cache   nginx round-robin with proxy_cache on GETs (18095): the anchor for cache hits
#     haproxy       haproxy roundrobin  (127.0.0.1:18091)   haproxy-lc leastconn  (18092)
#     NAME=HOST:PORT  any other proxy already listening there (e.g. ours=127.0.0.1:18100);
#                   if env CMD_NAME is set, run.sh starts it itself (pinned like the peers)
#                   and stops it at the end, e.g. CMD_ours="/path/to/proxy --listen 127.0.0.1:18100"
#                   It must balance over 127.0.0.1:18081 and 127.0.0.1:18082.
# env knobs (defaults):
#   ROUNDS=3 DURATION=10 WARMUP=2     rounds x seconds per measurement, warm-up seconds (not recorded)
#   WORKLOADS="get post delay sse"    subset/order of workloads
#   LOADGEN=wrk                       wrk (default) or oha, for get/post/delay; sse always uses sseprobe
#   PIN=split                         split: proxies on PROXY_CPU, backends+load generator on LOAD_CPU
#                                     none : no taskset at all
#   PROXY_CPU=1 LOAD_CPU=0
#   OUTDIR=/tmp/letta-proxy-bench/<timestamp>
#   HARNESS_TARGET=<repo>/target/bench-harness   where backend/ is built (cargo --target-dir)
# Every load loop is bounded: each measurement runs DURATION s under `timeout`.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
WORKLOADS=${WORKLOADS:-"get post delay sse"}
LOADGEN=${LOADGEN:-wrk}
PIN=${PIN:-split}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
STAMP=$(date +%Y%m%d-%H%M%S)
OUTDIR=${OUTDIR:-/tmp/letta-proxy-bench/$STAMP}
# The stand-in backend is a Cargo project of its own (backend/, own Cargo.lock, own workspace),
# built into the repository's target/ so that it is ignored by git and Docker alike.
HARNESS_TARGET=${HARNESS_TARGET:-$(cd "$BENCH/../.." && pwd)/target/bench-harness}
BIN=$HARNESS_TARGET/release
export BENCH_LUA_DIR=$BENCH/lua
BE1=18081
BE2=18082

[ $# -eq 0 ] && set -- direct nginx haproxy

mkdir -p "$OUTDIR/raw" "$OUTDIR/nginx/logs" "$OUTDIR/nginx/tmp"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [ "$PIN" = split ]; then
  PPIN=(taskset -c "$PROXY_CPU"); LPIN=(taskset -c "$LOAD_CPU"); WRK_THREADS=1
else
  PPIN=(); LPIN=(); WRK_THREADS=2
fi

# ---------------------------------------------------------------- build / tools
log "building backend and sseprobe (release; a no-op when up to date)"
cargo build --release -q --manifest-path "$BENCH/backend/Cargo.toml" --target-dir "$HARNESS_TARGET"
command -v "$LOADGEN" >/dev/null || { echo "load generator $LOADGEN not found" >&2; exit 1; }

# ---------------------------------------------------------------- process bookkeeping
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
wait_port() { local i; for i in $(seq 1 100); do port_busy "$1" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# ---------------------------------------------------------------- resolve targets
declare -A TADDR TKIND
TLIST=()
need_nginx=0; need_haproxy=0
for spec in "$@"; do
  case "$spec" in
    direct)     TADDR[$spec]=127.0.0.1:$BE1; TKIND[$spec]=direct ;;
    nginx)      TADDR[$spec]=127.0.0.1:18090; TKIND[$spec]=nginx; need_nginx=1 ;;
    nginx-lc)   TADDR[$spec]=127.0.0.1:18093; TKIND[$spec]=nginx; need_nginx=1 ;;
    nginx-cache) TADDR[$spec]=127.0.0.1:18095; TKIND[$spec]=nginx; need_nginx=1 ;;
    haproxy)    TADDR[$spec]=127.0.0.1:18091; TKIND[$spec]=haproxy; need_haproxy=1 ;;
    haproxy-lc) TADDR[$spec]=127.0.0.1:18092; TKIND[$spec]=haproxy; need_haproxy=1 ;;
    *=*)        n=${spec%%=*}; TADDR[$n]=${spec#*=}; TKIND[$n]=external; spec=$n
                case "${TADDR[$n]}" in 127.0.0.1:*|localhost:*) ;; *) echo "only 127.0.0.1 targets allowed: $spec" >&2; exit 1;; esac ;;
    *) echo "unknown target $spec" >&2; exit 1 ;;
  esac
  TLIST+=("$spec")
done

[ $need_nginx = 0 ] || command -v nginx >/dev/null || { echo "nginx not found (apt-get install -y nginx)" >&2; exit 1; }
[ $need_haproxy = 0 ] || command -v haproxy >/dev/null || { echo "haproxy not found (apt-get install -y haproxy)" >&2; exit 1; }

# refuse to run on top of something else already bound to our ports
for p in $BE1 $BE2 18090 18091 18092 18093 18095 18096 18097; do
  if port_busy $p; then echo "port $p already in use; stop whatever holds it first (ss -ltnp sport = :$p)" >&2; exit 1; fi
done

# ---------------------------------------------------------------- versions / environment
{
  echo "date: $(date -Is)"; echo "host: $(uname -srm)"; echo "cpus: $(nproc) ($(lscpu | sed -n 's/^Model name: *//p'))"
  echo "debian: $(cat /etc/debian_version)"
  echo "nginx: $(nginx -v 2>&1)"; echo "haproxy: $(haproxy -v | head -1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"; echo "oha: $(oha --version 2>/dev/null || echo missing)"
  echo "rustc: $(rustc --version)"; echo "loadgen: $LOADGEN (wrk threads: $WRK_THREADS)"
  echo "pinning: PIN=$PIN proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU (backends + load generator + sseprobe on load_cpu)"
  echo "rounds: $ROUNDS x ${DURATION}s, warmup ${WARMUP}s, workloads: $WORKLOADS"
  echo "targets: $*"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "command: $0 $*"
  env | grep -E '^(ROUNDS|DURATION|WARMUP|WORKLOADS|LOADGEN|PIN|PROXY_CPU|LOAD_CPU|CMD_)' || true
} > "$OUTDIR/env.txt"
cat "$OUTDIR/env.txt" >&2

# ---------------------------------------------------------------- start processes
ulimit -n 20000 2>/dev/null || true
"${LPIN[@]}" "$BIN/backend" --port $BE1 --name be1 >"$OUTDIR/be1.log" 2>&1 & PIDS+=($!); BE1_PID=$!
"${LPIN[@]}" "$BIN/backend" --port $BE2 --name be2 >"$OUTDIR/be2.log" 2>&1 & PIDS+=($!); BE2_PID=$!
wait_port $BE1; wait_port $BE2

declare -A TPID   # main pid of each target's process (for RSS)
TPID[direct]=$BE1_PID
if [ $need_nginx = 1 ]; then
  "${PPIN[@]}" nginx -p "$OUTDIR/nginx" -c "$BENCH/peers/nginx.conf" >"$OUTDIR/nginx.out" 2>&1 & PIDS+=($!)
  NGINX_PID=$!; wait_port 18090
  for t in nginx nginx-lc nginx-cache; do TPID[$t]=$NGINX_PID; done
fi
if [ $need_haproxy = 1 ]; then
  "${PPIN[@]}" haproxy -db -f "$BENCH/peers/haproxy.cfg" >"$OUTDIR/haproxy.out" 2>&1 & PIDS+=($!)
  HAPROXY_PID=$!; wait_port 18091
  for t in haproxy haproxy-lc; do TPID[$t]=$HAPROXY_PID; done
fi
for t in "${TLIST[@]}"; do
  if [ "${TKIND[$t]}" = external ]; then
    v="CMD_$t"; cmd=${!v:-}
    if [ -n "$cmd" ]; then
      "${PPIN[@]}" bash -c "exec $cmd" >"$OUTDIR/$t.out" 2>&1 & PIDS+=($!); TPID[$t]=$!
    fi
    wait_port "${TADDR[$t]##*:}"
    if [ -z "${TPID[$t]:-}" ]; then  # not started by us: find the listener's pid for RSS
      TPID[$t]=$(ss -Hltnp "sport = :${TADDR[$t]##*:}" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    fi
  fi
done

# ---------------------------------------------------------------- sanity checks
AG=agent-00000000-0000-4000-8000-000000000001
STREAM_Q="events=10&interval_ms=50"
for t in "${TLIST[@]}"; do
  a=${TADDR[$t]}
  curl -sf -m 5 "http://$a/v1/health/" | grep -q '"ok"' || { echo "sanity: $t health failed" >&2; exit 1; }
  n=$(curl -sf -m 5 "http://$a/v1/agents/$AG" | wc -c); [ "$n" -gt 1800 ] || { echo "sanity: $t agent GET size $n" >&2; exit 1; }
  curl -sf -m 5 -XPOST -H 'content-type: application/json' -d '{"x":1}' "http://$a/v1/agents/$AG/messages?delay_ms=1" | grep -q '"echo":{"x":1}' || { echo "sanity: $t POST echo failed" >&2; exit 1; }
  e=$(curl -sfN -m 5 -XPOST "http://$a/v1/agents/$AG/messages/stream?$STREAM_Q" | grep -c '^data:'); [ "$e" = 10 ] || { echo "sanity: $t SSE got $e events" >&2; exit 1; }
  log "sanity ok: $t -> $a"
done

# ---------------------------------------------------------------- workloads
stats() { # prints "be1_requests be1_conns be2_requests be2_conns"
  local a b
  a=$(curl -sf -m 2 http://127.0.0.1:$BE1/__stats); b=$(curl -sf -m 2 http://127.0.0.1:$BE2/__stats)
  python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(a["requests"],a["connections"],b["requests"],b["connections"])' "$a" "$b"
}

overflows() { # kernel-wide accept-queue overflows so far (dropped SYNs distort closed-loop results)
  nstat -az TcpExtListenOverflows 2>/dev/null | awk '/TcpExtListenOverflows/{print $2; f=1} END{if(!f) print 0}'
}

run_one() { # workload target seconds outfile
  local w=$1 t=$2 secs=$3 out=$4 a=${TADDR[$2]} conns url lua
  local hard=$((secs + 30))
  case $w in
    get)   conns=64;  url="http://$a/v1/agents/$AG"; lua=get.lua ;;
    post)  conns=64;  url="http://$a/v1/agents/$AG/messages"; lua=post1k.lua ;;
    delay) conns=256; url="http://$a/v1/agents/$AG/messages?delay_ms=20"; lua=post1k.lua ;;
    sse)   timeout $hard "${LPIN[@]}" "$BIN/sseprobe" --url "http://$a/v1/agents/$AG/messages/stream?$STREAM_Q" \
             --concurrency 32 --duration "$secs" > "$out" 2>"$out.err" || true
           return ;;
  esac
  if [ "$LOADGEN" = wrk ]; then
    timeout $hard "${LPIN[@]}" wrk -t$WRK_THREADS -c$conns -d${secs}s --timeout 5s -s "$BENCH_LUA_DIR/$lua" "$url" \
      > "$out.txt" 2>"$out.err" || true
    grep '^JSON:' "$out.txt" | sed 's/^JSON://' > "$out" || true
  else
    local body=()
    if [ $lua = post1k.lua ]; then
      body=(-m POST -T application/json -d "$(python3 -c 'print("{\"messages\":[{\"role\":\"user\",\"content\":\"" + "x"*943 + "\"}],\"stream_steps\":false,\"x\":\"0123456789\"}", end="")')")
    fi
    timeout $hard "${LPIN[@]}" oha -z ${secs}s -c $conns --no-tui --output-format json -t 5s "${body[@]}" "$url" \
      > "$out" 2>"$out.err" || true
  fi
}

if [ "$WARMUP" != 0 ]; then
  for w in $WORKLOADS; do for t in "${TLIST[@]}"; do
    log "warmup $w $t (${WARMUP}s)"; run_one $w $t "$WARMUP" "$OUTDIR/raw/warmup_${w}_${t}.json"; sleep 0.5
  done; done
fi

nt=${#TLIST[@]}
for r in $(seq 1 "$ROUNDS"); do
  for w in $WORKLOADS; do
    for i in $(seq 0 $((nt - 1))); do
      t=${TLIST[$(( (i + r - 1) % nt ))]}   # rotate start target each round: A B C, B C A, C A B ...
      s0=$(stats); o0=$(overflows)
      log "round $r/$ROUNDS  $w  $t  (${DURATION}s)"
      run_one $w $t "$DURATION" "$OUTDIR/raw/r${r}_${w}_${t}.json"
      sleep 0.5
      s1=$(stats); o1=$(overflows)
      echo "$r $w $t $s0 $s1" >> "$OUTDIR/backend_counts.txt"
      echo "$r $w $t $((o1 - o0))" >> "$OUTDIR/listen_overflows.txt"
    done
  done
done

# ---------------------------------------------------------------- memory of each target process tree
rss_tree() { # pid -> "rss_kb hwm_kb nprocs"
  local root=$1 p kids all rss=0 hwm=0 n=0
  all=$root; kids=$(pgrep -P "$root" || true); all="$all $kids"
  for p in $all; do
    [ -r /proc/$p/status ] || continue
    rss=$((rss + $(awk '/^VmRSS/{print $2}' /proc/$p/status)))
    hwm=$((hwm + $(awk '/^VmHWM/{print $2}' /proc/$p/status)))
    n=$((n + 1))
  done
  echo "$rss $hwm $n"
}
: > "$OUTDIR/rss.txt"
for t in "${TLIST[@]}"; do
  p=${TPID[$t]:-}
  if [ -n "$p" ] && [ -d /proc/$p ]; then
    echo "$t $p $(rss_tree "$p")" >> "$OUTDIR/rss.txt"   # target pid rss_kb hwm_kb nprocs
  else
    echo "$t - 0 0 0" >> "$OUTDIR/rss.txt"
  fi
done
echo "be2 $BE2_PID $(rss_tree $BE2_PID)" >> "$OUTDIR/rss.txt"

python3 "$BENCH/report.py" "$OUTDIR" "${TLIST[@]}" | tee "$OUTDIR/summary.md"
log "raw data and summary in $OUTDIR"
