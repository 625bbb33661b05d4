#!/usr/bin/env bash
# Set up (first run only) and start the service. Arguments go to `reranker serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/reranker serve "$@"
