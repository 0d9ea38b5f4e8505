#!/usr/bin/env bash
# vicuna: batched inference over converted test records (REFERENCE §5). Set the paths below or in the environment.
set -euo pipefail
MODEL=${MODEL:-models/vicuna-7b}
CHECKPOINT=${CHECKPOINT:-lora/vicuna-7b-lora}
INPUT=${INPUT:-data/NER/test.json}
OUTPUT=${OUTPUT:-results/vicuna-7b-lora.json}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} ${PYTHON:-python} src/inference.py \
    --stage sft \
    --model_name_or_path "$MODEL" \
    --checkpoint_dir "$CHECKPOINT" \
    --finetuning_type lora \
    --model_name vicuna \
    --template vicuna \
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
