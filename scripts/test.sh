#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, types, tests. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
echo "== ruff";   .venv/bin/ruff check .
echo "== mypy";   .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest "$@"
