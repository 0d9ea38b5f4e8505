#!/usr/bin/env bash
# baichuan: batched inference over converted test records (REFERENCE §5). Set the paths below or in the environment.
set -euo pipefail
MODEL=${MODEL:-models/Baichuan2-13B-Chat}
CHECKPOINT=${CHECKPOINT:-lora/baichuan2-13b-lora}
INPUT=${INPUT:-data/NER/test.json}
OUTPUT=${OUTPUT:-results/baichuan2-13b-lora.json}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} ${PYTHON:-python} src/inference.py \
    --stage sft \
    --model_name_or_path "$MODEL" \
    --checkpoint_dir "$CHECKPOINT" \
    --finetuning_type lora \
    --model_name baichuan \
    --template baichuan2 \
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
