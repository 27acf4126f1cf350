#!/usr/bin/env bash
# Installs what the deployment tests (tests/deploy_*.rs) need, on a fresh Debian machine:
#   promtool and prometheus (Debian package `prometheus`),
#   check-jsonschema, kubernetes-validate and PyYAML (PyPI, in a virtualenv),
#   docker-compose 1.29.2 (PyPI, in its own virtualenv: it pins an old PyYAML).
# Versions are pinned so a new release cannot change what CI checks.
# The virtualenvs go to $LETTA_PROXY_TOOLS_DIR (default ~/.cache/letta-proxy-deploy-tools),
# where the tests look first; a second run only checks that they are there.
set -euo pipefail
DIR="${LETTA_PROXY_TOOLS_DIR:-$HOME/.cache/letta-proxy-deploy-tools}"
mkdir -p "$DIR"

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian package may start a Prometheus service on :9090; the tests start their own.
promtool --version | head -1

if [ ! -x "$DIR/py/bin/kubernetes-validate" ]; then
  rm -rf "$DIR/py"
  python3 -m venv "$DIR/py"
  "$DIR/py/bin/pip" install -q --disable-pip-version-check \
    "check-jsonschema==0.39.0" "kubernetes-validate==1.37.0" "pyyaml==6.0.3"
fi
"$DIR/py/bin/kubernetes-validate" --version

if [ ! -x "$DIR/compose/bin/docker-compose" ]; then
  rm -rf "$DIR/compose"
  python3 -m venv "$DIR/compose"
  # docker-compose 1.29.2 wants PyYAML 5.4.1, whose source build fails with Cython 3:
  # build it with Cython 2 first, without build isolation.
  "$DIR/compose/bin/pip" install -q --disable-pip-version-check "cython<3" wheel setuptools
  "$DIR/compose/bin/pip" install -q --disable-pip-version-check --no-build-isolation "pyyaml==5.4.1"
  "$DIR/compose/bin/pip" install -q --disable-pip-version-check "docker-compose==1.29.2"
fi
"$DIR/compose/bin/docker-compose" version --short
echo "deploy tools ready in $DIR"
