#!/usr/bin/env bash
# Issue 15's GPU check, one script, at most 8 minutes on one H200 (not run yet: no GPU was lent to the session
# that wrote it). From the repository root, in an environment with `pip install -e ".[vllm]"` done:
#
#   bash benchmarks/gpu_issue15.sh [OUT_DIR]
#
# Qwen3-VL-2B-size student and 8B-size teacher (random init from configs, bf16), R = 512 then 2,048:
# rollout tokens/s HF generate vs vLLM (and one weight push), the training step split into
# scoring / loss+backward / optimizer for dopd and vanilla_opd with the dense and the lean loss (lean
# picks its GPU chunk sizes by itself, dopd_vlm/lean.py), MFU, peak memory. vLLM gets text-only
# prompts of the same length (a random-init checkpoint has no processor). Each run has its own
# timeout so one slow part cannot eat the other's time.
set -uo pipefail
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=. HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch, transformers, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name())"
# R = 512: B = 16 sequences, both tables, both losses (~2.5 min)
timeout 180 python benchmarks/bench_gpu.py --R 512 --B 16 --engines hf,vllm --tables dopd,vanilla_opd \
    --losses dense,lean --repeats 1 --train-steps 2 --out "$OUT/gpu_issue15_r512" || echo "R=512 run: rc=$?"
# R = 2,048: B = 8, both tables, both losses, one timed step (~4 min; HF generate is most of it)
timeout 270 python benchmarks/bench_gpu.py --R 2048 --B 8 --engines hf,vllm --tables dopd,vanilla_opd \
    --losses lean,dense --repeats 1 --train-steps 1 --out "$OUT/gpu_issue15_r2048" || echo "R=2048 run: rc=$?"
cat "$OUT"/gpu_issue15_r512.md "$OUT"/gpu_issue15_r2048.md 2>/dev/null
