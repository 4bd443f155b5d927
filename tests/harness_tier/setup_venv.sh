#!/usr/bin/env bash
# Builds the separate virtualenv for the harness benchmarks (`make test-harness`, docs/evaluation.md):
# evalscope 1.14.1 with bfcl-eval 2025.10.27.1 (BFCL-v3's official checker, its data files inside the
# wheel) and LiveCodeBench's execution-based scorer. bfcl-eval pins numpy==1.26.4 and pulls in
# sentence-transformers (and so torch), which neither the main .venv nor .venv-vllm can hold.
# torch is the CPU build (2.13.0+cpu): PyTorch's CPU wheel index, or a local wheel folder that pip
# already knows (PIP_FIND_LINKS); every other version is pinned in constraints-harness.txt.
# LiveBench is not on PyPI: install a clone of its repository into this venv yourself
# (`.venv-harness/bin/python -m pip install -e LIVEBENCH_CLONE`), see docs/evaluation.md.
set -euo pipefail
VENV=${1:-.venv-harness}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${HARNESS_CONSTRAINTS:-constraints-harness.txt}
TORCH_INDEX=${HARNESS_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
printf '# created by tests/harness_tier/setup_venv.sh\n*\n' > "$VENV/.gitignore"  # git ignores the whole venv
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[harness venv] installing CPU torch"
  # a local wheel folder or pip's cache first (no network wait where the CPU index is unreachable)
  "$PY" -m pip install -q -c "$CONSTRAINTS" torch 2>/dev/null \
    || "$PY" -m pip install -q -c "$CONSTRAINTS" --extra-index-url "$TORCH_INDEX" torch
fi
echo "[harness venv] installing evalscope and bfcl-eval (pinned by $CONSTRAINTS)"
# soundfile: imported by qwen-agent (which bfcl-eval's checker imports) but not declared by it
"$PY" -m pip install -q -c "$CONSTRAINTS" "evalscope==1.14.1" "bfcl-eval==2025.10.27.1" soundfile "pyarrow<24"
"$PY" -c "import evalscope, bfcl_eval.eval_checker.ast_eval.ast_checker, evalscope.benchmarks.live_code_bench.evaluate_utils"
"$PY" -c "import importlib.metadata as m; print('[harness venv]', ', '.join(f'{p} {m.version(p)}' for p in ('evalscope', 'bfcl-eval', 'torch', 'numpy', 'transformers')))"
touch "$VENV/.dopd-installed"
