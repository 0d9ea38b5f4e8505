"""P-Tuning v2 (prefix tuning in every layer) on peft: training (``train``), inference (``infer``) and the
checkpoint helpers (``prefix``). CLI scripts: ``src/finetuning_pt.py`` and ``src/inference_pt.py``."""
