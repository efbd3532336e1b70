#!/usr/bin/env bash
# GPU validation in one call: install the carried wheels, run the `gpu` suite (every method, bf16, two
# sequence lengths) with NVML and allocator figures, check it against the committed GPU reference,
# render the report, and print a summary table last.
#
#   on the GPU machine:  bash scripts/gpu_validate.sh             (writes under $OUT, else gpu-validate/)
#   here, on a CPU:      bash scripts/gpu_validate.sh --device cpu (a tiny model: the same path, end to end)
#
# Prepare the wheels here first with scripts/gpu_wheels.sh; the device call carries `.whl`.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
methods=""
out=${OUT:-gpu-validate}
reference=results/reference/gpu-h200/gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --reference) reference=$2; shift 2 ;;
    *) echo "gpu_validate: unknown argument $1 (use --device cpu|cuda, --methods a,b, --out DIR, --reference DIR)" >&2
       exit 2 ;;
  esac
done

if [ "$device" = cuda ]; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_validate: no wheels in .whl; run scripts/gpu_wheels.sh here and carry .whl" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  python=python3
  overrides=()
else
  python=.venv/bin/python
  export DS_ACCELERATOR=cpu
  # The same suite on a tiny Qwen2-MoE in float32: proves the whole path without a GPU.
  overrides=(--set model.preset=tiny-qwen2-moe --set model.experts=null --set model.dtype=float32
             --set workload.batch=2 --set "sweeps=[{workload.seq: [32, 64]}]" --set steps=2)
fi
export PYTHONUNBUFFERED=1
[ -n "$methods" ] && overrides+=(--methods "$methods")

mkdir -p "$out"
$python -m revbench env --json > "$out/env.json"
status=0
$python -m revbench run gpu --device "$device" --out "$out/results" --report-dir "$out/report" "${overrides[@]}" \
  || status=$?
if [ -f "$reference/results.jsonl" ] && [ "$device" = cuda ]; then
  $python -m revbench check "$out/results" --against "$reference" | tee "$out/check.txt" || status=$?
else
  echo "gpu_validate: no check: $([ "$device" = cuda ] && echo "no reference at $reference yet" || echo "CPU mode")"
fi
echo
echo "== summary ($device) =="
cat "$out/report/results.md"
exit $status
