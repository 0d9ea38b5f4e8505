"""The report of a prediction run, shared by ``src/inference.py``, ``instructkgc extract`` and P-Tuning (the
engine itself is built by :func:`instructkgc.infer.build_engine`)."""
from __future__ import annotations

from .utils import get_logger

logger = get_logger(__name__)


def report(counts, output_file, cutoff_flag: str = "--cutoff_len") -> None:
    """Log what a prediction run wrote, and warn about truncated prompts, cut-off and invalid answers."""
    logger.info("wrote %s: %d records (%d answered now, %d already there)", output_file, counts.records,
                counts.generated, counts.skipped)
    for n, what in ((counts.truncated_prompts, f"prompts were longer than {cutoff_flag} and lost the start of "
                                                "their query"),
                    (counts.cut_off, "answers were cut off by --max_new_tokens before finishing"),
                    (counts.invalid_json, "answers are not valid JSON")):
        if n:
            logger.warning("%d of %d %s", n, counts.generated, what)
