#!/usr/bin/env bash
# The device check of a CUDA box (one H200: under 8 minutes), on a tiny llama built here; see bench/gpu_check.py
# for the steps. Usage, from anywhere: bash bench/gpu_check.sh [--out DIR]   (CPU rehearsal: add --cpu)
# Packages the machine lacks (bitsandbytes, xgrammar, deepspeed, ...) may lie as wheels in .whl/: installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" bench/gpu_check.py "$@"
