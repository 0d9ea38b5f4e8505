#!/usr/bin/env bash
# Vicuna-7B: fine-tune vicuna with the vicuna template (REFERENCE settings of the original ft_scripts/fine_vicuna.bash).
# Usage (from the repository root): MODEL_PATH=/path/to/model bash ft_scripts/fine_vicuna.bash
# Optional: NGPU (default: GPUs from nvidia-smi, else 1), OUTPUT_DIR, TRAIN_FILE, MASTER_PORT, DEEPSPEED=configs/ds_config_bf16_stage2.json
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-models/vicuna-7b}
OUTPUT_DIR=${OUTPUT_DIR:-lora/vicuna-7b-v1}
TRAIN_FILE=${TRAIN_FILE:-data/NER/train.json}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "${NGPU}" -ge 1 ] 2>/dev/null || NGPU=1
mkdir -p "${OUTPUT_DIR}"
torchrun --nproc_per_node="${NGPU}" --master_port="${MASTER_PORT:-1287}" src/finetune.py \
    --do_train --do_eval \
    --overwrite_output_dir \
    --model_name_or_path "${MODEL_PATH}" \
    --stage sft \
    --model_name vicuna \
    --template vicuna \
    --train_file "${TRAIN_FILE}" \
    --val_set_size 100 \
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
    --lora_r 8 \
    --lora_alpha 16 \
    --lora_dropout 0.05 \
    --bits 4 \
    --bf16 \
    ${DEEPSPEED:+--deepspeed "${DEEPSPEED}"} "$@"
