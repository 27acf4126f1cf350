# Sourced by the benchmark scripts (load.sh, scaling.sh, memory.sh, cpu.sh): locates the
# side-by-side harness (benches/harness: stand-in backend, SSE probe, nginx/HAProxy configs,
# wrk scripts, run.sh), builds what they run, keeps track of the processes they start, and
# writes letta-proxy's bench config.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=$ROOT/benches/harness
case ${CARGO_TARGET_DIR:-target} in /*) TARGET_DIR=$CARGO_TARGET_DIR ;; *) TARGET_DIR=$ROOT/${CARGO_TARGET_DIR:-target} ;; esac
# The harness's backend is a separate Cargo project, built into target/bench-harness.
export HARNESS_TARGET=${HARNESS_TARGET:-$TARGET_DIR/bench-harness}
BE=$HARNESS_TARGET/release/backend
# PROXY_BIN=/path/to/letta-proxy measures another build (nothing is built then).
BIN=${PROXY_BIN:-$TARGET_DIR/release/letta-proxy}

need() { # tool... : exit when one is missing
  for tool; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
}

build_backend() { # the harness's stand-in Letta backend and SSE probe (release)
  cargo build --release -q --manifest-path "$HARNESS/backend/Cargo.toml" --target-dir "$HARNESS_TARGET"
}

install_tools() { # tool...: apt-get install the Debian packages of the same name when one is missing
  for tool; do
    command -v "$tool" >/dev/null && continue
    echo "installing $* (apt-get)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } \
      || { echo "apt-get could not install $* (Debian archive unreachable?)" >&2; exit 2; }
    return
  done
}

build_proxy() { # letta-proxy (release), unless PROXY_BIN names a build; extra arguments go to cargo
  [ -n "${PROXY_BIN:-}" ] && return 0
  (cd "$ROOT" && cargo build --release --bin letta-proxy "$@")
}

# The floor under letta-proxy on its own libraries (examples/hyper_floor.rs: hyper and
# tokio forwarding, nothing else), built in release; sets FLOOR_BIN.
build_floor() { # extra arguments go to cargo
  (cd "$ROOT" && cargo build --release --example hyper_floor "$@")
  FLOOR_BIN=$TARGET_DIR/release/examples/hyper_floor
}

# Bytes of the stand-in's answer to PATH (on be1): what the floor's `--static` answers with.
agent_bytes() { curl -s "http://127.0.0.1:18081$1" | wc -c; }

# Processes to stop at exit: append with PIDS+=($!).
PIDS=()
stop_pids() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }

wait_port() { # port [seconds]: wait up to seconds (10) for a listener
  for _ in $(seq $((${2:-10} * 10))); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2
  return 1
}

start_backends() { # the two stand-in backends every proxy config points at (18081, 18082), on CPU 0
  taskset -c 0 "$BE" --port 18081 --name be1 >/dev/null 2>&1 & PIDS+=($!)
  taskset -c 0 "$BE" --port 18082 --name be2 >/dev/null 2>&1 & PIDS+=($!)
}

# ours_config FILE PORT [EXTRA_TOML]: round robin over the harness's two backends
# (127.0.0.1:18081 and :18082), access log off (nginx's bench config has
# `access_log off`), then EXTRA_TOML (whole sections).
ours_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:$2"
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
${3:-}
TOML
}
