# Sourced by the benchmark scripts (load.sh, scaling.sh, memory.sh, cpu.sh): finds the
# shared side-by-side harness (../shared/bench, or BENCH_DIR), builds what they run, keeps
# track of the processes they start, and writes letta-proxy's bench config.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${BENCH_DIR:-$ROOT/../shared/bench}
[ -x "$SHARED/run.sh" ] || { echo "harness not found at $SHARED (set BENCH_DIR)" >&2; exit 1; }
# The harness builds its backend inside its own folder: use a writable copy when needed.
if [ ! -w "$SHARED" ]; then
  WORK=/tmp/letta-proxy-bench-harness
  if [ ! -x "$WORK/run.sh" ]; then rm -rf "$WORK"; cp -r "$SHARED" "$WORK"; chmod -R u+w "$WORK"; fi
  SHARED=$WORK
fi
BE=$SHARED/backend/target/release/backend
BIN=$ROOT/target/release/letta-proxy

need() { # tool... : exit when one is missing
  for tool; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
}

build_backend() { # the harness's stand-in Letta backend (release)
  [ -x "$BE" ] || (cd "$SHARED/backend" && cargo build --release -q)
}

build_proxy() { # letta-proxy (release); extra arguments go to cargo
  (cd "$ROOT" && cargo build --release --bin letta-proxy "$@")
}

# Processes to stop at exit: append with PIDS+=($!).
PIDS=()
stop_pids() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }

wait_port() { # port: wait up to 10 s for a listener
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2
  return 1
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
