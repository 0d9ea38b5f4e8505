#!/usr/bin/env bash
# Full-parameter continued training of OneKE (llama2_zh template). Needs much GPU memory: ZeRO-3 is the default.
# Usage (from the repository root): MODEL_PATH=models/OneKE bash ft_scripts/fine_continue_full.bash
# Optional: NGPU, OUTPUT_DIR, TRAIN_FILE, VALID_FILE, MASTER_PORT, DEEPSPEED ("" to disable)
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-models/OneKE}
OUTPUT_DIR=${OUTPUT_DIR:-lora/oneke-continue}
TRAIN_FILE=${TRAIN_FILE:-data/train.json}
VALID_FILE=${VALID_FILE:-data/dev.json}
DEEPSPEED=${DEEPSPEED-configs/ds_config_bf16_stage3.json}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "${NGPU}" -ge 1 ] 2>/dev/null || NGPU=1
mkdir -p "${OUTPUT_DIR}"
torchrun --nproc_per_node="${NGPU}" --master_port="${MASTER_PORT:-1287}" src/finetune.py \
    --do_train --do_eval \
    --overwrite_output_dir \
    --model_name_or_path "${MODEL_PATH}" \
    --stage sft \
    --model_name llama \
    --template llama2_zh \
    --finetuning_type full \
    --train_file "${TRAIN_FILE}" \
    --valid_file "${VALID_FILE}" \
    --output_dir "${OUTPUT_DIR}" \
    --per_device_train_batch_size 2 \
    --per_device_eval_batch_size 2 \
    --gradient_accumulation_steps 4 \
    --preprocessing_num_workers 16 \
    --num_train_epochs 10 \
    --learning_rate 5e-5 \
    --max_grad_norm 0.5 \
    --optim adamw_torch \
    --max_source_length 400 \
    --cutoff_len 700 \
    --max_target_length 300 \
    --evaluation_strategy epoch \
    --save_strategy epoch \
    --save_total_limit 10 \
    --bf16 \
    ${DEEPSPEED:+--deepspeed "${DEEPSPEED}"} "$@"
