#!/usr/bin/env bash
# Fine-tuning, full-parameter continued training of OneKE (ZeRO-3): the recipe configs/finetune/continue_full.yaml run by configs/launch.bash, which lists the
# environment variables it reads (MODEL_PATH, OUTPUT_DIR, TRAIN_FILE, NGPU, DEEPSPEED, ...). Extra flags override.
# Usage (from the repository root): MODEL_PATH=/path/to/model bash ft_scripts/fine_continue_full.bash [flags]
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "${HERE}/../configs/launch.bash" "${HERE}/../configs/finetune/continue_full.yaml" "$@"
