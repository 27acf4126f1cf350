#!/usr/bin/env bash
# TLS side by side: (a) full TLS handshakes per second, one request per connection, and
# (b) keep-alive HTTPS GET req/s, for nginx with `ssl` (benches/nginx-tls.conf) and
# letta-proxy with [server.tls]: the same certificate, protocol versions, cipher suites and
# groups, each proxy alone on the same pinned core, proxying to the harness's two stand-in
# backends. Plain-HTTP runs of both are the baseline (what TLS costs).
#
#   benches/tls.sh            # ROUNDS=3 DURATION=10: about 4 min per target
#   benches/tls.sh quick      # 1 round x 3 s, a smoke check
#
# env: CERT=ecdsa (P-256, default) or rsa (2048 bits); PROXY_CPU=1 LOAD_CPU=0;
#      HS_CONC=32 (handshake clients at a time); CONNS=64 (wrk connections);
#      TARGETS="nginx nginx_tls ours ours_tls" (any subset).
# (a) uses examples/tls_handshakes.rs (see there why not wrk or `openssl s_time`): rate
#     and the server's CPU per connection (user + kernel, from /proc/<pid>/stat), which
#     stays comparable even when the one load core limits the rate.
# (b) uses wrk with the harness's get.lua, like benches/load.sh.
# letta-proxy targets run only when the build serves TLS on [server.tls] (checked with
# `openssl s_client`); otherwise they are reported as skipped.
# Ports: backends 18201-18202, nginx 18210 (plain) / 18211 (TLS), letta-proxy 18220 / 18221.
# Results: /tmp/letta-proxy-bench-tls/<stamp>/summary.md
set -euo pipefail
MODE=${1:-main}
source "$(dirname "$0")/common.sh"   # the harness ($HARNESS, $BE), builds, wait_port, PIDS

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
if [ "$MODE" = quick ]; then ROUNDS=1; DURATION=3; fi
CERT=${CERT:-ecdsa}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
HS_CONC=${HS_CONC:-32}
CONNS=${CONNS:-64}
TARGETS=${TARGETS:-"nginx nginx_tls ours ours_tls"}
URL_PATH=/v1/agents/agent-00000000-0000-4000-8000-000000000001
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=/tmp/letta-proxy-bench-tls/$STAMP
RUN=$OUT/run
mkdir -p "$RUN/logs" "$RUN/tmp"

for tool in nginx wrk openssl; do
  command -v $tool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk openssl; break; }
done
for p in 18201 18202 18210 18211 18220 18221; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use" >&2; exit 1; fi
done

build_backend
build_proxy
(cd "$ROOT" && cargo build --release -q --example tls_handshakes)
HS=$ROOT/target/release/examples/tls_handshakes

cleanup() {
  [ -f "$RUN/nginx.pid" ] && nginx -p "$RUN" -c "$RUN/nginx-tls.conf" -s stop 2>/dev/null || true
  stop_pids
}
trap cleanup EXIT INT TERM

# One certificate for everybody: self-signed, localhost and 127.0.0.1.
case $CERT in
  ecdsa) KEYOPT=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
  rsa)   KEYOPT=(-newkey rsa:2048) ;;
  *) echo "CERT is ecdsa or rsa" >&2; exit 2 ;;
esac
openssl req -x509 "${KEYOPT[@]}" -nodes -days 7 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
cp "$ROOT/benches/nginx-tls.conf" "$RUN/"

# letta-proxy: the same shape as benches/load.sh's `ours` (cache off, no write ordering,
# access log off), over this script's backends.
ours_toml() { # port [tls]
  local tls=""
  [ -n "${2:-}" ] && tls=$(printf '[server.tls]\ncert_file = "%s"\nkey_file = "%s"' "$RUN/cert.pem" "$RUN/key.pem")
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
$tls
[balancer]
strategy = "round_robin"
[[backends]]
name = "be1"
url = "http://127.0.0.1:18201"
[[backends]]
name = "be2"
url = "http://127.0.0.1:18202"
[cache]
enabled = false
[limits]
serialize_agent_writes = false
[log]
access_log = false
level = "warn"
TOML
}
ours_toml 18220 > "$RUN/ours.toml"
ours_toml 18221 tls > "$RUN/ours-tls.toml"

ulimit -n 65536 2>/dev/null || true
taskset -c "$LOAD_CPU" "$BE" --port 18201 --name be1 >"$RUN/be1.log" 2>&1 & PIDS+=($!)
taskset -c "$LOAD_CPU" "$BE" --port 18202 --name be2 >"$RUN/be2.log" 2>&1 & PIDS+=($!)
taskset -c "$PROXY_CPU" nginx -p "$RUN" -c "$RUN/nginx-tls.conf" >"$RUN/nginx.out" 2>&1 & PIDS+=($!)
taskset -c "$PROXY_CPU" "$BIN" --config "$RUN/ours.toml" >"$RUN/ours.log" 2>&1 & OURS_PID=$!; PIDS+=($!)
taskset -c "$PROXY_CPU" "$BIN" --config "$RUN/ours-tls.toml" >"$RUN/ours-tls.log" 2>&1 & OURS_TLS_PID=$!; PIDS+=($!)
for p in 18201 18202 18210 18211 18220 18221; do wait_port $p; done
NGINX_PID=$(pgrep -P "$(cat "$RUN/nginx.pid")" -f "nginx: worker" | head -1)

declare -A PORT=([nginx]=18210 [nginx_tls]=18211 [ours]=18220 [ours_tls]=18221)
declare -A PID=([nginx]=$NGINX_PID [nginx_tls]=$NGINX_PID [ours]=$OURS_PID [ours_tls]=$OURS_TLS_PID)
declare -A TLS=([nginx]= [nginx_tls]=1 [ours]= [ours_tls]=1)

# What each TLS target negotiates with an OpenSSL client (wrk's library): the proof that
# both sides run the same protocol, suite and group.
{
  echo "date: $(date -Is)  host: $(uname -srm)  cpus: $(nproc)"
  echo "nginx: $(nginx -v 2>&1)  openssl: $(openssl version)  wrk: $(wrk -v 2>&1 | head -1)"
  echo "letta-proxy: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')  rustc: $(rustc --version)"
  echo "certificate: $CERT  rounds: $ROUNDS x ${DURATION}s  handshake clients: $HS_CONC  wrk connections: $CONNS"
  echo "pinning: proxies on CPU $PROXY_CPU, backends and load on CPU $LOAD_CPU"
  echo "loadavg at start: $(cat /proc/loadavg)"
} > "$OUT/env.txt"
ACTIVE=()
for t in $TARGETS; do
  if [ -n "${TLS[$t]}" ]; then
    probe=$(timeout 5 openssl s_client -connect "127.0.0.1:${PORT[$t]}" -servername localhost \
            -alpn h2,http/1.1 </dev/null 2>/dev/null | tr -d '\0' || true)
    if ! grep -q '^New, TLSv1' <<<"$probe"; then
      echo "$t: skipped: no TLS on 127.0.0.1:${PORT[$t]} (this letta-proxy build does not serve [server.tls] yet)" | tee -a "$OUT/env.txt"
      continue
    fi
    echo "$t: $(grep -m1 '^New, TLSv1' <<<"$probe" | sed 's/^New, //'); $(grep -m1 'Server Temp Key' <<<"$probe" | sed 's/^ *//'); $(grep -m1 '^ALPN' <<<"$probe" || echo 'no ALPN')" >> "$OUT/env.txt"
  fi
  ACTIVE+=("$t")
done
cat "$OUT/env.txt" >&2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# handshakes TARGET ROUND -> appends "target round rate cpu_us_per_conn errors negotiated"
handshakes() {
  local t=$1 r=$2 c0 c1 json
  c0=$(cpu_ticks "${PID[$t]}")
  json=$(timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" "$HS" "127.0.0.1:${PORT[$t]}" "$URL_PATH" \
         "$DURATION" "$HS_CONC" ${TLS[$t]:-plain})
  c1=$(cpu_ticks "${PID[$t]}")
  python3 - "$t" "$r" "$c0" "$c1" "$HZ" "$json" >> "$OUT/handshakes.tsv" <<'PY'
import json, sys
t, r, c0, c1, hz, j = sys.argv[1:]
d = json.loads(j)
n = max(d["handshakes"], 1)
server_s = (int(c1) - int(c0)) / int(hz)
cpu_us = server_s * 1e6 / n
busy = 100 * server_s / d["seconds"]
client = 100 * d["client_cpu_s"] / d["seconds"]
print(f'{t}\t{r}\t{d["rate"]:.0f}\t{cpu_us:.1f}\t{d["errors"]}\t{busy:.0f}\t{client:.0f}\t{d["negotiated"]}')
PY
}

# keepalive TARGET ROUND -> appends "target round rps p99_us cpu_us_per_req errors"
keepalive() {
  local t=$1 r=$2 c0 c1 json scheme=http
  [ -n "${TLS[$t]}" ] && scheme=https
  c0=$(cpu_ticks "${PID[$t]}")
  json=$(BENCH_LUA_DIR=$HARNESS/lua timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" \
         wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$HARNESS/lua/get.lua" \
         "$scheme://127.0.0.1:${PORT[$t]}$URL_PATH" | grep '^JSON:' | cut -c6-)
  c1=$(cpu_ticks "${PID[$t]}")
  python3 - "$t" "$r" "$c0" "$c1" "$HZ" "$json" >> "$OUT/keepalive.tsv" <<'PY'
import json, sys
t, r, c0, c1, hz, j = sys.argv[1:]
d = json.loads(j)
n = max(d["requests"], 1)
e = sum(d["errors"].values())
cpu_us = (int(c1) - int(c0)) * 1e6 / int(hz) / n
print(f'{t}\t{r}\t{d["rps"]:.0f}\t{d["lat_us"]["p99"]:.0f}\t{cpu_us:.1f}\t{e}')
PY
}

# Warm-up: pools to the backends, page cache, CPU frequency.
for t in "${ACTIVE[@]}"; do
  s=http; [ -n "${TLS[$t]}" ] && s=https
  timeout 20 taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "$s://127.0.0.1:${PORT[$t]}$URL_PATH" >/dev/null
done

# Interleaved: every round runs each target once, so drift in the machine's load hits all.
for r in $(seq "$ROUNDS"); do
  for t in "${ACTIVE[@]}"; do
    echo "round $r: $t handshakes" >&2; handshakes "$t" "$r"
    echo "round $r: $t keep-alive" >&2; keepalive "$t" "$r"
  done
done

echo "loadavg at end: $(cat /proc/loadavg)" >> "$OUT/env.txt"
python3 - "$OUT" "${ACTIVE[@]}" > "$OUT/summary.md" <<'PY'
import csv, statistics, sys
out, targets = sys.argv[1], sys.argv[2:]
def rows(name):
    return list(csv.reader(open(f"{out}/{name}.tsv"), delimiter="\t"))
def med(rs, t, col):
    v = [float(r[col]) for r in rs if r[0] == t]
    return statistics.median(v) if v else float("nan")
hs, ka = rows("handshakes"), rows("keepalive")
print(open(f"{out}/env.txt").read())
print("(a) one request per new connection (full TLS handshake on TLS targets), medians of rounds\n")
print("| target | connections/s | server CPU µs per connection | server core busy % | load generator busy % | errors |")
print("|---|---|---|---|---|---|")
for t in targets:
    print(f"| {t} | {med(hs,t,2):.0f} | {med(hs,t,3):.1f} | {med(hs,t,5):.0f} | {med(hs,t,6):.0f} | {sum(int(r[4]) for r in hs if r[0]==t)} |")
print("\n(server core busy % below ~95: the proxy was not the limit, e.g. the shared load core was;"
      " compare CPU µs per connection then.)")
print("\n(b) keep-alive GET, wrk, medians of rounds\n")
print("| target | req/s | p99 µs | server CPU µs per request | errors |")
print("|---|---|---|---|---|")
for t in targets:
    print(f"| {t} | {med(ka,t,2):.0f} | {med(ka,t,3):.0f} | {med(ka,t,4):.1f} | {sum(int(r[5]) for r in ka if r[0]==t)} |")
pairs = [("ours_tls", "nginx_tls"), ("ours", "nginx"), ("nginx_tls", "nginx"), ("ours_tls", "ours")]
lines = []
for a, b in pairs:
    if a in targets and b in targets:
        lines.append(f"| {a} / {b} | {med(hs,a,2)/med(hs,b,2):.2f} | {med(ka,a,2)/med(ka,b,2):.2f} |")
if lines:
    print("\nratios (rate over rate)\n")
    print("| pair | connections/s | keep-alive req/s |")
    print("|---|---|---|")
    print("\n".join(lines))
print("\nraw rounds: handshakes.tsv, keepalive.tsv in " + out)
PY
cat "$OUT/summary.md"
