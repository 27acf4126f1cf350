#!/usr/bin/env bash
# End-to-end suite: real Letta 0.16.8 servers on one PostgreSQL, letta-proxy in front, driven
# by the official letta-client SDK (pytest). From nothing to a verdict, then tears down every
# process it started (by PID), also on failure or Ctrl-C.
#
#   1. tools: redis-server (apt-get when absent), a cached venv with tests/e2e/requirements.txt,
#      letta-proxy (cargo build --release)
#   2. the kit (tests/e2e/kit/letta.sh, see its README.md): PostgreSQL+pgvector, fake LLM, Letta
#      on the backend ports of config/e2e.toml; then, in a call of its own, one password-
#      protected Letta (LETTA_SERVER_SECURE=true) on the backend port of config/e2e-secure.toml
#      (parts already running are reused and left running)
#   3. three Redis servers on free ports (temp dirs, no persistence): one for the main proxy (and
#      the HTTPS one and examples/embed), one shared by the two secure-mode proxies, one shared by
#      the three multi-instance proxies
#   4. letta-proxy --config config/e2e.toml; twice letta-proxy --config config/e2e-secure.toml on
#      free ports (listen and Redis URL from LETTA_PROXY__SERVER__LISTEN / __REDIS__URL); one
#      letta-proxy --config tests/e2e/e2e-tls.toml (HTTPS, with a CA and a localhost certificate
#      made by openssl in the work dir); examples/embed.rs (the gateway under /letta in an
#      axum application) with config/e2e.toml on a free port; three times letta-proxy --config
#      config/e2e-multi.toml (the same two Letta servers, one Redis, admin API on free ports)
#   5. pytest tests/e2e
#
# Exit status: pytest's (5, "no tests collected", becomes 1); 2 when the setup failed, with the
# reason on stderr (a package registry that cannot be reached is named as such).
#
# Env: BASE            the kit's work dir (default /tmp/letta-e2e): Letta venv, pgdata, PID files
#                      (PG_PORT and FAKE_LLM_PORT are honoured as the kit does)
#      E2E_CACHE       where test venvs are cached (default $BASE/e2e-venvs)
#      E2E_SECURE_PASSWORD  password of the secure-mode Letta server (default letta-e2e-secret)
#      E2E_PROXY_BIN   use this letta-proxy binary instead of building one
#      E2E_EMBED_BIN   use this build of examples/embed.rs instead of building it
#      E2E_KEEP_LETTA  1: leave the Letta stack this script started running (proxy and Redis still stop)
#      E2E_PYTEST_ARGS extra pytest arguments, e.g. "-k stream -x"
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONFIG=$REPO/config/e2e.toml
SECURE_CONFIG=$REPO/config/e2e-secure.toml
MULTI_CONFIG=$REPO/config/e2e-multi.toml
TLS_CONFIG=$REPO/tests/e2e/e2e-tls.toml
KIT=$REPO/tests/e2e/kit/letta.sh
export BASE=${BASE:-/tmp/letta-e2e}
SECURE_PASSWORD=${E2E_SECURE_PASSWORD:-letta-e2e-secret}
E2E_CACHE=${E2E_CACHE:-$BASE/e2e-venvs}
WORK=$(mktemp -d /tmp/letta-proxy-e2e.XXXXXX)   # this run's logs and Redis dir
T0=$(date +%s)

log() { printf 'e2e [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------- cleanup (trap) ----------
PIDS_TO_STOP=()          # "name pid" of processes this run started directly
LETTA_STARTED=()         # pieces of the Letta stack this run started: postgres fake_llm letta-<port>

stop_pid() {  # $1 = name, $2 = pid: TERM, wait up to 20 s, then KILL
  local name=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  log "killed $name (pid $pid)"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$CHILD_PID" ] && stop_pid "running step" "$CHILD_PID"
  for entry in "${PIDS_TO_STOP[@]}"; do stop_pid ${entry}; done
  if [ "${E2E_KEEP_LETTA:-0}" = 1 ]; then
    [ ${#LETTA_STARTED[@]} -gt 0 ] && log "E2E_KEEP_LETTA=1: leaving running: ${LETTA_STARTED[*]}"
  elif [ ${#LETTA_STARTED[@]} -gt 0 ]; then
    local i pieces=()
    for (( i = ${#LETTA_STARTED[@]} - 1; i >= 0; i-- )); do pieces+=("${LETTA_STARTED[$i]}"); done  # servers first
    # by the kit's PID files, read now: a test may have restarted a server
    bash "$KIT" stop "${pieces[@]}" 2>&1 | while read -r line; do log "$line"; done
  fi
  if [ "$rc" -ne 0 ]; then
    local f
    for f in "$WORK"/proxy*.log "$WORK"/embed.log; do
      [ -f "$f" ] || continue
      echo "---- last lines of a letta-proxy log ($f) ----" >&2
      tail -n 20 "$f" >&2
    done
  fi
  log "done, exit $rc (logs: $WORK, Letta logs: $BASE/logs)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Long steps run in the background while the script waits for them: bash runs a trap only once
# the foreground command returns, so this lets a TERM or Ctrl-C stop the step and clean up at once.
CHILD_PID=""
run_step() {  # $1 = seconds, $2.. = command (run from the repository root)
  local secs=$1; shift
  (cd "$REPO" && exec timeout --kill-after=10 "$secs" "$@") &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

wait_for() {  # $1 = what, $2 = seconds, $3.. = command that succeeds when ready
  local what=$1 secs=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.3
  done
  log "$what ready"
}

# Name the registry when an install step fails, so a network problem never looks like a test failure.
registry_check() {  # $1 = registry name, $2.. = probe command through its ordinary client
  local name=$1; shift
  if timeout 60 "$@" >/dev/null 2>&1; then
    die "the step above failed, and $name answers: not a network problem, see the output above"
  fi
  die "$name cannot be reached (probe: $*). The e2e suite needs it to install its dependencies; it did not run."
}

# ---------------------------------------------------------------- 0. read the config ------
if ! command -v python3 >/dev/null || ! command -v curl >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  log "python3, python3-venv or curl missing: apt-get install python3 python3-venv curl"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq python3 python3-venv curl >/dev/null; } \
    || die "the Debian package archive cannot be reached (apt-get install python3 python3-venv curl failed)"
fi
for f in "$CONFIG" "$SECURE_CONFIG" "$TLS_CONFIG" "$MULTI_CONFIG" "$KIT"; do [ -f "$f" ] || die "missing $f"; done
# listen addresses and backends come from the config files, the single source of truth
eval "$(python3 - "$CONFIG" "$SECURE_CONFIG" "$TLS_CONFIG" "$MULTI_CONFIG" <<'PY'
import sys, tomllib
from urllib.parse import urlsplit
cfg = tomllib.load(open(sys.argv[1], "rb"))
backends = cfg["backends"]
print(f'PROXY_LISTEN={cfg["server"]["listen"]}')
print(f'BACKENDS={",".join(b["name"] + "=" + b["url"] for b in backends)}')
print(f'LETTA_PORTS="{" ".join(str(urlsplit(b["url"]).port) for b in backends)}"')
secure = tomllib.load(open(sys.argv[2], "rb"))["backends"]
assert len(secure) == 1, "config/e2e-secure.toml: exactly one backend (the secure-mode Letta)"
print(f'SECURE_BACKEND={secure[0]["url"].rstrip("/")}')
print(f'SECURE_PORT={urlsplit(secure[0]["url"]).port}')
tls = tomllib.load(open(sys.argv[3], "rb"))["backends"]
assert tls == backends, "tests/e2e/e2e-tls.toml: the backends of config/e2e.toml"
multi = tomllib.load(open(sys.argv[4], "rb"))["backends"]
assert [(b["name"], b["url"]) for b in multi] == [(b["name"], b["url"]) for b in backends], \
    "config/e2e-multi.toml: the same backends as config/e2e.toml"
PY
)"
PROXY_URL=http://$PROXY_LISTEN
PROXY_PORT=${PROXY_LISTEN##*:}
log "proxy $PROXY_URL, backends $BACKENDS; secure-mode backend $SECURE_BACKEND"

# ---------------------------------------------------------------- 1. tools ----------------
if ! command -v redis-server >/dev/null; then
  log "redis-server missing: apt-get install redis-server"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq redis-server >/dev/null; } \
    || registry_check "the Debian package archive" apt-get update -qq
fi

REQS=$REPO/tests/e2e/requirements.txt
VENV=$E2E_CACHE/venv-$(sha256sum "$REQS" | cut -c1-12)
if [ ! -f "$VENV/.complete" ]; then
  log "creating test venv $VENV"
  rm -rf "$VENV"; mkdir -p "$E2E_CACHE"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  { run_step 600 "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS" && touch "$VENV/.complete"; } \
    || registry_check "PyPI (through pip)" "$VENV/bin/pip" index versions pip --disable-pip-version-check
fi

if [ -n "${E2E_PROXY_BIN:-}" ]; then
  PROXY_BIN=$E2E_PROXY_BIN
else
  command -v cargo >/dev/null || die "cargo is required to build letta-proxy (or set E2E_PROXY_BIN)"
  # Fetch first, so that a registry problem and a compile error are told apart.
  run_step 900 cargo fetch \
    || registry_check "crates.io (through cargo)" bash -c 'cd / && cargo info serde'
  log "cargo build --release --bin letta-proxy"
  run_step 2400 cargo build --release --bin letta-proxy \
    || die "cargo build --release --bin letta-proxy failed (output above)"
  case ${CARGO_TARGET_DIR:-target} in /*) TARGET_DIR=$CARGO_TARGET_DIR ;; *) TARGET_DIR=$REPO/${CARGO_TARGET_DIR:-target} ;; esac
  PROXY_BIN=$TARGET_DIR/release/letta-proxy
fi
[ -x "$PROXY_BIN" ] || die "no letta-proxy binary at $PROXY_BIN"
if [ -n "${E2E_EMBED_BIN:-}" ]; then
  EMBED_BIN=$E2E_EMBED_BIN
else
  # A debug build: examples link the dev-dependencies, which `cargo test` has built already
  # (in CI this is a no-op), while a release build of them would take minutes for nothing.
  log "cargo build --example embed"
  run_step 2400 cargo build --example embed \
    || die "cargo build --example embed failed (output above)"
  case ${CARGO_TARGET_DIR:-target} in /*) TARGET_DIR=$CARGO_TARGET_DIR ;; *) TARGET_DIR=$REPO/${CARGO_TARGET_DIR:-target} ;; esac
  EMBED_BIN=$TARGET_DIR/debug/examples/embed
fi
[ -x "$EMBED_BIN" ] || die "no examples/embed binary at $EMBED_BIN"

# A CA and a certificate for localhost (and 127.0.0.1) it signed, for the HTTPS proxy.
if ! command -v openssl >/dev/null; then
  log "openssl missing: apt-get install openssl"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq openssl >/dev/null; } \
    || registry_check "the Debian package archive" apt-get update -qq
fi
TLS_DIR=$WORK/tls; mkdir -p "$TLS_DIR"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=letta-proxy e2e CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$TLS_DIR/localhost.key" -out "$TLS_DIR/localhost.csr" &&
  openssl x509 -req -in "$TLS_DIR/localhost.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 2 -out "$TLS_DIR/localhost.pem" \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
} >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; die "openssl could not make the test certificate"; }
# Only for the HTTPS instance (every other one would turn HTTPS on too).
TLS_ENV=(LETTA_PROXY__SERVER__TLS__CERT_FILE="$TLS_DIR/localhost.pem" LETTA_PROXY__SERVER__TLS__KEY_FILE="$TLS_DIR/localhost.key")

for f in "$CONFIG" "$SECURE_CONFIG" "$TLS_CONFIG" "$MULTI_CONFIG"; do
  env "${TLS_ENV[@]}" "$PROXY_BIN" --config "$f" --check >"$WORK/check.log" 2>&1 \
    || { cat "$WORK/check.log" >&2; die "letta-proxy --check rejects $f"; }
done

# ---------------------------------------------------------------- 2. Letta stack ----------
port_open "${PG_PORT:-5433}" || LETTA_STARTED+=(postgres)
curl -sf "http://127.0.0.1:${FAKE_LLM_PORT:-8787}/v1/models" >/dev/null 2>&1 || LETTA_STARTED+=(fake_llm)
for port in $LETTA_PORTS $SECURE_PORT; do
  curl -sf "http://127.0.0.1:$port/v1/health/" >/dev/null 2>&1 || LETTA_STARTED+=("letta-$port")
done
kit() {  # $1 = log name, rest = env assignments for the kit; the kit's exit 2 (registry, prerequisite) stays 2
  local name=$1 rc=0; shift
  run_step 1500 env "$@" bash "$KIT" start >"$WORK/$name.log" 2>&1 || rc=$?
  { grep -E "^letta-kit: (letta|postgres|fake LLM)" "$WORK/$name.log" || true; } | while read -r line; do log "$line"; done
  [ "$rc" = 0 ] && return 0
  tail -n 40 "$WORK/$name.log" >&2
  die "the Letta kit failed, exit $rc (log: $WORK/$name.log)"
}
# The secure-mode settings reach every server one kit call starts, so each mode has its own call.
log "kit: Letta on $LETTA_PORTS (first run installs Letta: minutes)"
kit kit-open -u LETTA_SERVER_SECURE -u LETTA_SERVER_PASSWORD LETTA_PORTS="$LETTA_PORTS"
log "kit: secure-mode Letta on $SECURE_PORT"
kit kit-secure LETTA_PORTS="$SECURE_PORT" LETTA_SERVER_SECURE=true LETTA_SERVER_PASSWORD="$SECURE_PASSWORD"
# A secure server left running by an earlier run may have another password.
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $SECURE_PASSWORD" "$SECURE_BACKEND/v1/agents/?limit=1")" = 200 ] \
  || die "the secure-mode Letta on $SECURE_PORT refuses E2E_SECURE_PASSWORD (started with another one? $KIT stop letta-$SECURE_PORT)"

# ---------------------------------------------------------------- 3. Redis ----------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_redis() {  # $1 = name -> prints nothing, sets REDIS_PORT
  REDIS_PORT=$(free_port)
  mkdir -p "$WORK/$1"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/$1" \
    >"$WORK/$1.log" 2>&1 &
  REDIS_PID=$!
  PIDS_TO_STOP+=("$1 $!")
  wait_for "$1 on :$REDIS_PORT" 15 bash -c "[ \"\$(redis-cli -p $REDIS_PORT ping)\" = PONG ]" \
    || { tail -n 20 "$WORK/$1.log" >&2; die "redis-server ($1) did not start"; }
}
# Separate servers: Redis pub/sub ignores database numbers, so one server would carry the main
# proxy's invalidations to the secure pair.
start_redis redis; MAIN_REDIS=$REDIS_PORT
start_redis redis-secure; SECURE_REDIS=$REDIS_PORT
start_redis redis-multi; MULTI_REDIS=$REDIS_PORT; MULTI_REDIS_PID=$REDIS_PID

# ---------------------------------------------------------------- 4. letta-proxy ----------
start_proxy() {  # $1 = name, $2 = config, $3 = listen address, $4 = Redis port
  local name=$1 config=$2 listen=$3 redis=$4 pid deadline
  # PROXY_ENV (VAR=value ...), READY_URL and READY_CURL, set for the call: an HTTPS instance's
  # settings and how to ask it whether it is ready (/tmp paths hold no spaces).
  local ready=${READY_URL:-http://$listen/-/ready}
  port_open "${listen##*:}" && die "port ${listen##*:} is already in use (a letta-proxy left over from another run?)"
  # shellcheck disable=SC2086  # PROXY_ENV is a list of assignments
  LETTA_PROXY__SERVER__LISTEN=$listen LETTA_PROXY__REDIS__URL=redis://127.0.0.1:$redis \
    RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 env ${PROXY_ENV:-} "$PROXY_BIN" --config "$config" >"$WORK/$name.log" 2>&1 &
  pid=$!
  PROXY_PID=$pid
  PIDS_TO_STOP=("$name $pid" "${PIDS_TO_STOP[@]}")   # stop the proxies before Redis
  deadline=$(( $(date +%s) + 30 ))
  # shellcheck disable=SC2086  # READY_CURL is a list of arguments
  until [ "$(curl -s ${READY_CURL:-} -o /dev/null -w '%{http_code}' "$ready")" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || die "$name exited at start-up (log: $WORK/$name.log)"
    [ "$(date +%s)" -lt "$deadline" ] || die "$name was not ready on $ready within 30 s"
    sleep 0.3
  done
  log "$name ready on ${ready%/-/ready} (pid $pid)"
}
start_proxy proxy "$CONFIG" "$PROXY_LISTEN" "$MAIN_REDIS"
SECURE_A=127.0.0.1:$(free_port); start_proxy proxy-secure-a "$SECURE_CONFIG" "$SECURE_A" "$SECURE_REDIS"
SECURE_B=127.0.0.1:$(free_port); start_proxy proxy-secure-b "$SECURE_CONFIG" "$SECURE_B" "$SECURE_REDIS"
TLS_PORT=$(free_port); TLS_REDIRECT=127.0.0.1:$(free_port)
PROXY_ENV="${TLS_ENV[*]} LETTA_PROXY__SERVER__TLS__REDIRECT_HTTP_LISTEN=$TLS_REDIRECT" \
  READY_URL=https://localhost:$TLS_PORT/-/ready READY_CURL="--cacert $TLS_DIR/ca.pem" \
  start_proxy proxy-tls "$TLS_CONFIG" "127.0.0.1:$TLS_PORT" "$MAIN_REDIS"
# The embedding example: its own listen address is its second argument; Letta under /letta.
EMBED_PORT=$(free_port); EMBED_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
EMBED_TOKEN=$EMBED_TOKEN LETTA_PROXY__REDIS__URL=redis://127.0.0.1:$MAIN_REDIS RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 \
  "$EMBED_BIN" "$CONFIG" "127.0.0.1:$EMBED_PORT" >"$WORK/embed.log" 2>&1 &
PIDS_TO_STOP=("embed $!" "${PIDS_TO_STOP[@]}")
wait_for "examples/embed on :$EMBED_PORT" 30 bash -c \
  "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer $EMBED_TOKEN' http://127.0.0.1:$EMBED_PORT/letta/-/ready)\" = 200 ]" \
  || { tail -n 20 "$WORK/embed.log" >&2; die "examples/embed was not ready within 30 s"; }
MULTI_URLS=(); MULTI_ADMINS=(); MULTI_PIDS=()
for i in 1 2 3; do
  listen=127.0.0.1:$(free_port); admin=127.0.0.1:$(free_port)
  PROXY_ENV="LETTA_PROXY__SERVER__ADMIN_LISTEN=$admin" start_proxy "proxy-multi-$i" "$MULTI_CONFIG" "$listen" "$MULTI_REDIS"
  MULTI_URLS+=("http://$listen"); MULTI_ADMINS+=("http://$admin"); MULTI_PIDS+=("$PROXY_PID")
done
join() { local IFS=,; echo "$*"; }

# ---------------------------------------------------------------- 5. pytest ---------------
log "pytest tests/e2e against $PROXY_URL"
export LETTA_PROXY_URL=$PROXY_URL LETTA_E2E_REQUIRE_PROXY=1 LETTA_E2E_BACKENDS=$BACKENDS \
  LETTA_E2E_BASE=$BASE LETTA_E2E_KIT=$KIT \
  LETTA_E2E_SECURE_PROXIES=http://$SECURE_A,http://$SECURE_B LETTA_E2E_SECURE_BACKEND=$SECURE_BACKEND \
  LETTA_E2E_SECURE_PASSWORD=$SECURE_PASSWORD \
  LETTA_E2E_TLS_PROXY=https://localhost:$TLS_PORT LETTA_E2E_TLS_CA=$TLS_DIR/ca.pem \
  LETTA_E2E_TLS_REDIRECT=http://localhost:${TLS_REDIRECT##*:} \
  LETTA_E2E_EMBED_URL=http://127.0.0.1:$EMBED_PORT LETTA_E2E_EMBED_TOKEN=$EMBED_TOKEN \
  LETTA_E2E_MULTI_PROXIES=$(join "${MULTI_URLS[@]}") LETTA_E2E_MULTI_ADMINS=$(join "${MULTI_ADMINS[@]}") \
  LETTA_E2E_MULTI_PIDS=$(join "${MULTI_PIDS[@]}") LETTA_E2E_MULTI_REDIS_PID=$MULTI_REDIS_PID \
  LETTA_E2E_MULTI_REDIS_PORT=$MULTI_REDIS LETTA_E2E_FAKE_LLM=http://127.0.0.1:${FAKE_LLM_PORT:-8787}
rc=0
# shellcheck disable=SC2086  # E2E_PYTEST_ARGS is a list of arguments
run_step 900 "$VENV/bin/python" -m pytest tests/e2e -p no:cacheprovider ${E2E_PYTEST_ARGS:-} || rc=$?
case $rc in
  0) log "e2e suite passed" ;;
  5) echo "e2e: FAILED: pytest collected no tests" >&2; rc=1 ;;
  124|137) echo "e2e: FAILED: pytest hit the 900 s limit" >&2 ;;
  *) echo "e2e: FAILED: pytest exit $rc" >&2 ;;
esac
exit "$rc"
