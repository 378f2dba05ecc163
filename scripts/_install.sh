# Sourced by run-dev and run-tests: install what a fresh Debian machine lacks, idempotently.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "installing softhsm2 (Debian package)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends softhsm2 >/dev/null
fi
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver (Debian packages: the status page's browser test)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
if [ -z "${VIRTUAL_ENV:-}" ]; then
  # Not inside a virtualenv: keep the project's dependencies in its own.
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
# pip only when what it installs from changed: a stamp in the virtualenv holds the hash of the build inputs
# (dependencies, build hooks, protos; the daemon's and the client SDK's) and of this checkout's path.
# A second start then takes no pip time; a clean clone (CI) has no stamp and installs everything.
_hsmlb_stamp="$VIRTUAL_ENV/.hsmlb-installed"
_hsmlb_inputs="$( { pwd; python -V; cat pyproject.toml setup.py clients/python/pyproject.toml clients/python/setup.py; \
  find proto -name '*.proto' | sort | xargs cat; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_hsmlb_stamp" 2>/dev/null)" != "$_hsmlb_inputs" ] \
    || ! python -c 'import hsmlb.v1.hsmlb_pb2_grpc, hsmlb_client, pytest' >/dev/null 2>&1; then
  python -m pip install -q --disable-pip-version-check -e ".[test]"
  # The client SDK, its own distribution (grpcio + protobuf only): the tests and the load suite use it.
  python -m pip install -q --disable-pip-version-check -e clients/python
  echo "$_hsmlb_inputs" > "$_hsmlb_stamp"
fi
unset _hsmlb_stamp _hsmlb_inputs
