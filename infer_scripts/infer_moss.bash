#!/usr/bin/env bash
# Batched inference, moss: the recipe configs/infer/moss.yaml run by configs/launch.bash, which lists the
# environment variables it reads (MODEL, CHECKPOINT, INPUT, OUTPUT, BITS, BATCH_SIZE, PYTHON). Extra flags override.
# Usage (from the repository root): MODEL=... INPUT=... OUTPUT=... bash infer_scripts/infer_moss.bash [flags]
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "${HERE}/../configs/launch.bash" "${HERE}/../configs/infer/moss.yaml" "$@"
