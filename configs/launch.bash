#!/usr/bin/env bash
# Run one recipe: a YAML of flags under configs/finetune/ (torchrun src/finetune.py) or configs/infer/
# (src/inference.py). Flags after the recipe override it; so do these environment variables, when set:
#   fine-tuning: MODEL_PATH, OUTPUT_DIR, TRAIN_FILE, VALID_FILE, LORA_PATH (--checkpoint_dir), BITS,
#                DEEPSPEED (a ZeRO config; "" = none), NGPU (processes; default: the GPUs CUDA_VISIBLE_DEVICES
#                lists, else those nvidia-smi lists, MIG lines not counted, else 1), MASTER_PORT (1287)
#   inference:   MODEL, CHECKPOINT, INPUT, OUTPUT, BITS, BATCH_SIZE, PYTHON (python), CUDA_VISIBLE_DEVICES (0)
#   DRY_RUN=1 prints the command instead of running it.
# Usage (from the repository root): bash configs/launch.bash configs/finetune/llama.yaml [--flag value ...]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

count_gpus() {
    local n=0 d
    if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
        local IFS=,
        for d in ${CUDA_VISIBLE_DEVICES}; do
            case "${d// /}" in ''|-*) break ;; esac  # CUDA stops at the first invalid entry
            n=$((n + 1))
        done
    elif command -v nvidia-smi >/dev/null 2>&1; then
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    [ "${n}" -ge 1 ] 2>/dev/null || n=1
    echo "${n}"
}

flag_from_env() {  # flag_from_env VAR --flag: pass --flag "$VAR" when VAR is set (even to "")
    if [ -n "${!1+set}" ]; then FLAGS+=("$2" "${!1}"); fi
}

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "error: usage: bash configs/launch.bash configs/{finetune,infer}/NAME.yaml [flags]${1:+ ($1: not found)}" >&2
    exit 2
fi
RECIPE=$1
shift
FLAGS=()
case "$(basename "$(dirname "${RECIPE}")")" in
    finetune)
        flag_from_env MODEL_PATH --model_name_or_path
        flag_from_env OUTPUT_DIR --output_dir
        flag_from_env TRAIN_FILE --train_file
        flag_from_env VALID_FILE --valid_file
        flag_from_env LORA_PATH --checkpoint_dir
        flag_from_env BITS --bits
        flag_from_env DEEPSPEED --deepspeed
        NGPU=${NGPU:-$(count_gpus)}
        CMD=(torchrun --nproc_per_node="${NGPU}" --master_port="${MASTER_PORT:-1287}" "${ROOT}/src/finetune.py")
        ;;
    infer)
        flag_from_env MODEL --model_name_or_path
        flag_from_env CHECKPOINT --checkpoint_dir
        flag_from_env INPUT --input_file
        flag_from_env OUTPUT --output_file
        flag_from_env BITS --bits
        flag_from_env BATCH_SIZE --batch_size
        CMD=(env "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}" ${PYTHON:-python} "${ROOT}/src/inference.py")
        ;;
    *)
        echo "error: ${RECIPE}: a recipe lives in configs/finetune/ or configs/infer/" >&2
        exit 2
        ;;
esac
CMD+=("${RECIPE}" ${FLAGS[@]+"${FLAGS[@]}"} "$@")
if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
exec "${CMD[@]}"
