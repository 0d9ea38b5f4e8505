"""Predict with a P-Tuning v2 checkpoint: ``python src/inference_pt.py --help``."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # ie2instruction
    from instructkgc.ptuning.infer import main

    main()
