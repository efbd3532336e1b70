#!/usr/bin/env bash
# The CPU regression gate: run the smoke and handoff suites on CPU and check them against the committed reference
# (results/reference/cpu-smoke). Exact tensor bytes gate at 0 %; timings are reported only.
#   scripts/gate.sh            run and check (exit 1 on a regression, a missing run or a status change)
#   scripts/gate.sh --refresh  run and record the result as the new reference (every run must be ok)
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export OMP_NUM_THREADS=2  # the reference was recorded with 2 threads: kernels' scratch buffers may depend on it
reference=results/reference/cpu-smoke
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run_suites() {
  for suite in smoke handoff; do
    .venv/bin/python -m revbench run "$suite" --device cpu --out "$1" --no-report
  done
}

if [ "${1:-}" = --refresh ]; then
  run_suites "$out"
  .venv/bin/python - "$out" <<'PY'
import sys
from revbench.check import load
bad = [f"{r.method}: {r.status} ({r.error})" for r in load(sys.argv[1]) if r.status != "ok"]
missed = [r.method for r in load(sys.argv[1]) if r.metrics["memory"].get("profiler_missed_frees")]
if bad:
    sys.exit("not recording a reference with failed runs:\n" + "\n".join(bad))
if missed:
    sys.exit("not recording a reference the profiler missed frees in (run again on a quiet machine): "
             + ", ".join(missed))
PY
  mkdir -p "$reference"
  cp "$out/results.jsonl" "$reference/results.jsonl"
  echo "refreshed $reference/results.jsonl: review the diff and commit it"
  exit 0
fi

# The ZeRO methods run their collectives on gloo, whose worker thread sometimes frees a collective's buffer after
# the step's thread let go of it: the profiler never hears that free (measure/profiler_bytes.py puts it back at the
# latest moment it can have happened), so under load one ZeRO run in a few peaks a block or two above its
# reference. Those methods are allowed 1 % (2 % of activations), and a check that fails is confirmed by running
# the suites again, up to three times: a regression the code made repeats every time, a missed free seldom twice.
# ZeRO-1/2/3 on the device peak in their step with 2 KiB of activations, so one such block (zero1: 262,144 B, in one
# run of five seen) is 100 times them: their activations are reported, not gated, their total gated at 1 %.
attempts=3
for attempt in $(seq "$attempts"); do
  run="$out/attempt-$attempt"
  run_suites "$run"
  if .venv/bin/python -m revbench check "$run" --against "$reference" --tolerance zero3-offload:tensor_bytes=1 \
      --tolerance revffn-zero2-offload:tensor_bytes=1 --tolerance revffn-zero2-offload:tensor_bytes.activations=2 \
      --tolerance zero1:tensor_bytes=1 --tolerance zero2:tensor_bytes=1 --tolerance zero3:tensor_bytes=1 \
      --tolerance zero1:tensor_bytes.activations=off --tolerance zero2:tensor_bytes.activations=off \
      --tolerance zero3:tensor_bytes.activations=off
  then
    exit 0
  fi
  [ "$attempt" -lt "$attempts" ] && echo "gate: attempt $attempt of $attempts failed; running the suites again"
done
echo "gate: the check failed $attempts times in a row"
exit 1
