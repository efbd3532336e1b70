#!/usr/bin/env bash
# Prepare ./.whl: the wheels a bare GPU machine (Python 3.12, torch 2.11, transformers 5.17, no deepspeed,
# no registry) needs to run revbench at our pins. The device tool carries .whl; scripts/gpu_validate.sh
# installs it there. Run here, where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$@"
}
pin() { grep -i "^$1==" constraints/cpu.txt; }
# transformers at our pin (the image has 5.17); its other needs are all in the image.
download "$(pin transformers)"
# deepspeed ships only an sdist: build a pure-python wheel (ops JIT-compile there on first use).
[ -n "$(ls .whl/deepspeed-*.whl 2>/dev/null)" ] || \
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl "$(pin deepspeed)"
# 8-bit AdamW (its wheel carries its CUDA kernels: about 43 MB of the 64 MiB a device call may carry).
download "$(pin bitsandbytes)"
# deepspeed's needs that the image lacks.
download hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
ls -la .whl
du -sh .whl
