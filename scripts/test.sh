#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it:
# the Python packages (pinned), and Debian's chromium for the browser tests
# (Playwright's own browser download does not work offline); ruff and mypy
# must pass before pytest starts.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k io`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

# The gate: lint, formatting and types (pyproject.toml says which files and how) before the tests.
ruff check .
ruff format --check .
python3 -m mypy

exec python3 -m pytest "$@"
