"""Fine-tune an LLM on instruction records: ``python src/finetune.py --help``."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # ie2instruction
    from instructkgc.train import main

    main()
