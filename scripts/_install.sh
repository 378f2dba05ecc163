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
python -m pip install -q --disable-pip-version-check -e ".[test]"
# The client SDK, its own distribution (grpcio + protobuf only): the tests and the load suite use it.
python -m pip install -q --disable-pip-version-check -e clients/python
