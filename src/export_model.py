"""Merge LoRA adapters into the base model and save it: ``python src/export_model.py --help``."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # ie2instruction
    from instructkgc.export import main

    main()
