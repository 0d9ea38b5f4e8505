#!/usr/bin/env bash
# Fine-tuning, MOSS-moon-003-sft QLoRA: the recipe configs/finetune/moss.yaml run by configs/launch.bash, which lists the
# environment variables it reads (MODEL_PATH, OUTPUT_DIR, TRAIN_FILE, NGPU, DEEPSPEED, ...). Extra flags override.
# Usage (from the repository root): MODEL_PATH=/path/to/model bash ft_scripts/fine_moss.bash [flags]
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "${HERE}/../configs/launch.bash" "${HERE}/../configs/finetune/moss.yaml" "$@"
