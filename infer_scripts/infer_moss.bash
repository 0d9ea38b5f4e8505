#!/usr/bin/env bash
# moss: batched inference over converted test records (REFERENCE §5). Set the paths below or in the environment.
set -euo pipefail
MODEL=${MODEL:-models/moss-moon-003-sft}
CHECKPOINT=${CHECKPOINT:-lora/moss-v1}
INPUT=${INPUT:-data/NER/test.json}
OUTPUT=${OUTPUT:-results/moss-v1-lora.json}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} ${PYTHON:-python} src/inference.py \
    --stage sft \
    --model_name_or_path "$MODEL" \
    --checkpoint_dir "$CHECKPOINT" \
    --finetuning_type lora \
    --model_name moss \
    --template alpaca \
    --do_predict \
    --input_file "$INPUT" \
    --output_file "$OUTPUT" \
    --output_dir lora/test \
    --predict_with_generate \
    --cutoff_len 512 \
    --bf16 \
    --bits ${BITS:-4} \
    --max_new_tokens 300 \
    --batch_size ${BATCH_SIZE:-16} \
    "$@"
