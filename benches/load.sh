#!/usr/bin/env bash
# Side-by-side load benchmark: letta-proxy against direct, nginx and HAProxy, with the
# harness in benches/harness (its README.md describes the method).
#
#   benches/load.sh                 # main table: direct nginx nginx-cache haproxy ours ours-cache (~15 min)
#   benches/load.sh features        # each layer on/off, GET and POST (~9 min)
#   benches/load.sh log             # the access log on against off, GET and POST (~4 min)
#   benches/load.sh bypass          # the cache layer present but the route not cacheable
#   benches/load.sh quick           # 1 round x 5 s, for a smoke check (~3 min)
#   BASELINE_BIN=/path/to/letta-proxy benches/load.sh compare
#                                   # this build against another one (an older commit's
#                                   # release binary), GET and POST, interleaved (~6 min)
#   CACHE=on BASELINE_BIN=… benches/load.sh compare
#                                   # the same with the cache layer on in both (a POST
#                                   # then takes the cache's write path)
#
# nginx-cache is nginx with proxy_cache on GETs (port 18095): the anchor for ours_cache's hits.
#
# Needs nginx, haproxy and wrk (apt-get install -y nginx haproxy wrk; installed when absent).
# Results: /tmp/letta-proxy-bench/<stamp>/summary.md; docs/BENCHMARKS.md quotes one run.
# Every target gets the same core (PIN=split: proxies on CPU 1, load + backends on CPU 0).
set -euo pipefail
MODE=${1:-main}
source "$(dirname "$0")/common.sh"

install_tools nginx haproxy wrk

build_proxy
CONF=$(mktemp -d /tmp/letta-proxy-bench-conf.XXXX)

# One config file per target: the common part (benches/common.sh: round robin over the
# harness's two backends, access log off), then the target's own TOML. Per-agent write
# ordering is off in most targets: the harness sends every POST and stream to the same
# agent, which letta-proxy would (correctly) run one at a time; nginx and HAProxy do no
# such thing, so the comparison is of raw proxying. `ours_ordered` shows the cost of
# ordering on that workload.
conf() { # name port extra-toml
  ours_config "$CONF/$1.toml" "$2" "${3:-}"
  echo "$BIN --config $CONF/$1.toml"
}
NOLIMITS=$'[limits]\nserialize_agent_writes = false'

# ours: cache off (every GET is proxied).
export CMD_ours=$(conf ours 18100 "$NOLIMITS"$'\n[cache]\nenabled = false')
# ours_cache: cache on; the agent GET is answered from memory after the first miss.
export CMD_ours_cache=$(conf ours-cache 18101 "$NOLIMITS")

case $MODE in
  main)
    exec "$HARNESS/run.sh" direct nginx nginx-cache haproxy ours=127.0.0.1:18100 ours_cache=127.0.0.1:18101 ;;
  quick)
    ROUNDS=1 DURATION=5 WARMUP=1 exec "$HARNESS/run.sh" direct nginx nginx-cache ours=127.0.0.1:18100 ours_cache=127.0.0.1:18101 ;;
  features)
    # Each layer switched on (or off) alone against `ours`.
    export CMD_ours_log=$(conf ours-log 18102 "$NOLIMITS"$'\n[cache]\nenabled = false')
    sed -i 's/^access_log = false/access_log = true/; s/^level = "warn"/level = "info"/' "$CONF/ours-log.toml"
    export CMD_ours_nometrics=$(conf ours-nometrics 18103 "$NOLIMITS"$'\n[cache]\nenabled = false\n[metrics]\nenabled = false')
    export CMD_ours_ordered=$(conf ours-ordered 18104 $'[cache]\nenabled = false')
    export CMD_ours_bypass=$(conf ours-bypass 18105 "$NOLIMITS"$'\n[cache]\nenabled = true\n[[cache.rules]]\npath = "/v1/agents/**"\ncache = false')
    WORKLOADS=${WORKLOADS:-"get post"} exec "$HARNESS/run.sh" nginx ours=127.0.0.1:18100 ours_log=127.0.0.1:18102 \
      ours_nometrics=127.0.0.1:18103 ours_ordered=127.0.0.1:18104 ours_bypass=127.0.0.1:18105 ;;
  log)
    # The access log's cost alone: `ours` against `ours_log` (access log on, level info).
    export CMD_ours_log=$(conf ours-log 18102 "$NOLIMITS"$'\n[cache]\nenabled = false')
    sed -i 's/^access_log = false/access_log = true/; s/^level = "warn"/level = "info"/' "$CONF/ours-log.toml"
    WORKLOADS=${WORKLOADS:-"get post"} exec "$HARNESS/run.sh" nginx ours=127.0.0.1:18100 ours_log=127.0.0.1:18102 ;;
  bypass)
    # The cache layer in the stack but the route not cacheable: the layer's own cost.
    export CMD_ours_bypass=$(conf ours-bypass 18105 "$NOLIMITS"$'\n[cache]\nenabled = true\n[[cache.rules]]\npath = "/v1/agents/**"\ncache = false')
    WORKLOADS=${WORKLOADS:-"get post"} exec "$HARNESS/run.sh" nginx ours=127.0.0.1:18100 ours_bypass=127.0.0.1:18105 ;;
  compare)
    # This build (`ours`) against BASELINE_BIN (`base`) on the same config, same run.
    [ -x "${BASELINE_BIN:-}" ] || { echo "compare: set BASELINE_BIN to another letta-proxy binary" >&2; exit 2; }
    case ${CACHE:-off} in
      off) ours_config "$CONF/base.toml" 18106 "$NOLIMITS"$'\n[cache]\nenabled = false' ;;
      on) export CMD_ours=$(conf ours 18100 "$NOLIMITS")
          ours_config "$CONF/base.toml" 18106 "$NOLIMITS" ;;
      *) echo "compare: CACHE=off or CACHE=on" >&2; exit 2 ;;
    esac
    export CMD_base="$BASELINE_BIN --config $CONF/base.toml"
    WORKLOADS=${WORKLOADS:-"get post"} exec "$HARNESS/run.sh" nginx ours=127.0.0.1:18100 base=127.0.0.1:18106 ;;
  *) echo "usage: $0 [main|features|log|bypass|quick|compare]" >&2; exit 2 ;;
esac
