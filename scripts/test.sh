#!/usr/bin/env bash
# The test command: set up, run the test suite. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
.venv/bin/python -m pytest -q "$@"
# The CPU regression gate: the smoke suite's exact tensor bytes against results/reference/cpu-smoke.
./scripts/gate.sh
