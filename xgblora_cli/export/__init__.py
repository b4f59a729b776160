"""What leaves a run: a merged Hugging Face folder (xgblora merge), an exact or rank-limited PEFT adapter, a merged
GGUF file."""
