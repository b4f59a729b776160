"""xgblora: fine-tune LLMs with gradient-boosted rank-1 LoRA adapters (XGBLoRA), COLA or LoRA."""

__version__ = "0.1.0"
