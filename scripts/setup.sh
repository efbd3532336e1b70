#!/usr/bin/env bash
# Set up revbench in ./.venv on a fresh machine. CPU machines get the exact versions in
# constraints/cpu.txt (a bare `torch` would pull a multi-GB CUDA build). With REVBENCH_CUDA=1 the
# torch already installed in the interpreter is kept and only the revbench pins are applied.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${REVBENCH_CUDA:-0}" = 1 ]; then
    "$python" -m venv --system-site-packages .venv
  else
    "$python" -m venv .venv
  fi
fi
constraints=constraints/cpu.txt
if [ "${REVBENCH_CUDA:-0}" = 1 ]; then
  grep -v '^torch==' constraints/cpu.txt > .venv/constraints-cuda.txt
  constraints=.venv/constraints-cuda.txt
fi
stamp=.venv/.revbench-installed
want=$(cat pyproject.toml "$constraints" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c "$constraints" -e ".[all,dev]"
  echo "$want" > "$stamp"
fi
.venv/bin/python -m pip check >/dev/null || .venv/bin/python -m pip check
echo "revbench is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
