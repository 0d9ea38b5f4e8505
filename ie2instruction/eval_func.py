"""Command line: score model answers. See ``--help`` and the README (Evaluation)."""
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ie2instruction.evaluation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
