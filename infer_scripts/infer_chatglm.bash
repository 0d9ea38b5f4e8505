#!/usr/bin/env bash
# chatglm: batched inference over converted test records (REFERENCE §5). Set the paths below or in the environment.
set -euo pipefail
MODEL=${MODEL:-models/chatglm3-6b}
CHECKPOINT=${CHECKPOINT:-lora/chatglm3-6b-lora}
INPUT=${INPUT:-data/NER/test.json}
OUTPUT=${OUTPUT:-results/chatglm3-6b-lora.json}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} ${PYTHON:-python} src/inference.py \
    --stage sft \
    --model_name_or_path "$MODEL" \
    --checkpoint_dir "$CHECKPOINT" \
    --finetuning_type lora \
    --model_name chatglm \
    --template chatglm3 \
    --do_predict \
    --input_file "$INPUT" \
    --output_file "$OUTPUT" \
    --output_dir lora/test \
    --predict_with_generate \
    --cutoff_len 512 \
    --bf16 \
    --bits ${BITS:-16} \
    --max_new_tokens 300 \
    --batch_size ${BATCH_SIZE:-16} \
    "$@"
