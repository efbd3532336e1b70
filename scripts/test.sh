#!/usr/bin/env bash
# The test command: set up, run the test suite. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
.venv/bin/python -m pytest -q "$@"
