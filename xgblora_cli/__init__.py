"""xgblora: fine-tune LLMs with gradient-boosted low-rank LoRA adapters (XGBLoRA), COLA or LoRA."""

__version__ = "0.1.0"

import logging as _logging

# torchao (the sharded 4-bit base, nf4.py; transformers imports it too once installed) warns at import about GPU
# kernels a CPU build cannot load, and torch's pytree about its enums: noise on every command, not the user's business
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
