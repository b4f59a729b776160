"""Quantized bases (bitsandbytes 4-bit NF4 or 8-bit; torchao NF4 when sharded, nf4.py) and where merged boosters
live on them.

A booster is never merged by re-quantizing ``Q(W) + dW``: a rank-1 update is far below one quantization step,
so it would vanish (and each re-quantization would add its own error). Instead the merged boosters of a
quantized layer stay as their exact fp32 factors, stacked ``U = [U_1 .. U_T]`` (d_out, R) and
``V = [V_1; ..; V_T]`` (R, d_in), and a forward hook adds ``(x V^T) U^T`` to the quantized layer's output.
That is the record itself, held on the device: nothing is rounded, and ``xgblora merge`` later folds the
same factors into the *original unquantized* weights (see record.py), never into the quantized ones.
Memory: ``4 * (d_in + d_out)`` bytes per rank-1 booster per weight, which ``xgblora plan`` counts.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from xgblora_cli.common.errors import UserError, first_line

_QUANTIZED_LINEARS = ("Linear4bit", "Linear8bitLt")


def bnb_config(quantization: str, compute_dtype: torch.dtype):  # -> transformers.BitsAndBytesConfig | None
    """The transformers quantization config for ``quantization`` (None for ``none``)."""
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as err:  # not installed, or no usable backend on this machine
        raise UserError(f"quantization: '{quantization}' needs bitsandbytes, which could not be loaded: {first_line(err)}") from None
    if quantization == "8bit":
        # bitsandbytes' 8-bit matmul warns on every call that it casts inputs to fp16; that is how it works
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                                  bnb_4bit_use_double_quant=True)


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes quantized linear layer, or a linear layer holding an NF4 weight (sharded or not, nf4.py)."""
    if type(module).__name__ in _QUANTIZED_LINEARS:
        return True
    weight = getattr(module, "weight", None)
    return type(getattr(weight, "_local_tensor", weight)).__name__ == "NF4Tensor"


def keep_standard_layout(model: nn.Module) -> None:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights. On a CPU with AVX512-BF16 its eval-time forward
    rewrites each weight in place into a CPU-only layout (and fails on an output size not divisible by 32); the
    weights and quantization states are then no longer the ones that loaded, saved or dequantized elsewhere."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of a linear layer, quantized (packed weight) or not."""
    return module.out_features, module.in_features


def _add_merged(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the quantized layer's output plus its merged boosters, ``(x V^T) U^T`` in fp32."""
    x = inputs[0]
    low = F.linear(x.to(torch.float32), module.xgblora_v)  # (..., R)
    return output + F.linear(low, module.xgblora_u).to(output.dtype)


def set_merged(module: nn.Module, u: torch.Tensor, v: torch.Tensor) -> None:
    """Make ``module`` (a quantized linear) add ``u @ v`` (d_out x d_in, held as factors) to its output.

    u: (d_out, R) and v: (R, d_in), every merged booster of this weight stacked; replaces the previous stack.
    """
    device = next(module.parameters()).device
    module.xgblora_u = u.to(device, torch.float32).contiguous()
    module.xgblora_v = v.to(device, torch.float32).contiguous()
    if not getattr(module, "xgblora_hooked", False):
        module.register_forward_hook(_add_merged)
        module.xgblora_hooked = True
