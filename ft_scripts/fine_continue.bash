#!/usr/bin/env bash
# Continue training a released IE LoRA (llama2-13b-iepile-lora) on new data; the adapter is resumed as the
# trainable one, so its own rank/alpha (64/64) apply. Usage (from the repository root):
#   MODEL_PATH=models/llama2-13B-Chat LORA_PATH=lora/llama2-13b-iepile-lora bash ft_scripts/fine_continue.bash
# Optional: NGPU, OUTPUT_DIR, TRAIN_FILE, VALID_FILE, MASTER_PORT, BITS (16; 4 for QLoRA), DEEPSPEED
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-models/llama2-13B-Chat}
LORA_PATH=${LORA_PATH:-lora/llama2-13b-iepile-lora}
OUTPUT_DIR=${OUTPUT_DIR:-lora/llama2-13b-chat-v1-continue}
TRAIN_FILE=${TRAIN_FILE:-data/train.json}
VALID_FILE=${VALID_FILE:-data/dev.json}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "${NGPU}" -ge 1 ] 2>/dev/null || NGPU=1
mkdir -p "${OUTPUT_DIR}"
torchrun --nproc_per_node="${NGPU}" --master_port="${MASTER_PORT:-1287}" src/finetune.py \
    --do_train --do_eval \
    --overwrite_output_dir \
    --model_name_or_path "${MODEL_PATH}" \
    --checkpoint_dir "${LORA_PATH}" \
    --stage sft \
    --model_name llama \
    --template llama2 \
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
    --lora_r 64 \
    --lora_alpha 64 \
    --lora_dropout 0.05 \
    --bits "${BITS:-16}" \
    --bf16 \
    ${DEEPSPEED:+--deepspeed "${DEEPSPEED}"} "$@"
