#!/usr/bin/env bash
# Runs every cargo-fuzz target of this directory for a bounded time and fails on the first crash,
# panic, leak, timeout or out-of-memory. Usage: fuzz/run.sh [target...]
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   targets to run when none are given (default: all of `cargo fuzz list`)
#   FUZZ_SANITIZER none (default) or address. The crate forbids unsafe code, so AddressSanitizer
#                  only watches dependencies' unsafe blocks; it also makes the build several
#                  times slower. CI runs without it; use address for a long run of your own.
# The committed corpus (fuzz/corpus/<target>) is only read: inputs found on the way go to a
# scratch directory that is removed at the end. A crashing input is kept in
# fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <file>); add it to the
# corpus with the fix. Installs the nightly toolchain and cargo-fuzz when they are missing (exit 2
# when that fails). On a 2-core machine the first build takes a few minutes without the
# sanitizer, 8-13 with it.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
export CARGO_INCREMENTAL=0

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "nightly toolchain missing: installing it"
  rustup toolchain install nightly --profile minimal \
    || { echo "cannot install the nightly toolchain: is static.rust-lang.org reachable?" >&2; exit 2; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz missing: installing it"
  cargo install cargo-fuzz --locked \
    || { echo "cannot install cargo-fuzz: is crates.io reachable?" >&2; exit 2; }
fi

if [ $# -gt 0 ]; then
  targets=("$@")
elif [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

start=$(date +%s)
for t in "${targets[@]}"; do cargo +nightly fuzz build --sanitizer "$sanitizer" "$t"; done
echo "built in $(( $(date +%s) - start )) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  echo "=== $t: ${seconds} s"
  # -timeout: one input may take at most 10 s; -rss_limit_mb: libFuzzer's default, said aloud.
  if ! cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  found=$(find "$scratch/$t" -type f | wc -l)
  summary+=("$t: ${execs:-?} executions in ${seconds} s (${speed:-?}/s), ${cov:-cov: ?}, ${found} new inputs")
done
echo
echo "=== fuzz summary (total $(( $(date +%s) - start )) s, build included)"
printf '%s\n' "${summary[@]}"
