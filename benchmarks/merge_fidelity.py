"""Merge fidelity: how far the merged weights drift from the exact sum ``W0 + all updates`` as boosters pile up.

Takes a real SmolLM2-135M weight (``model.layers.L.mlp.down_proj.weight``, stored as bfloat16 as a bf16 model
would hold it) and merges T rank-1 updates into it, for T = 10, 100, 1000, two ways:

- ``plain``: ``W += dW`` in bfloat16 after every merge (what a naive implementation does);
- ``record``: xgblora's remedy - the in-memory weight is recomputed from the base tensor and all factors
  (``merge.exact_rows_into``, the code the trainer runs, on ``--device``: a GPU where there is one), rounded once
  to bfloat16; export does the same.

Updates are ``u v^T`` with ``|dW| ~ size * std(W0)``, either independent random directions or one coherent
direction with noise. Prints, per case, the error against the exact float64 sum in ulps of bfloat16 (max and
mean) and as a fraction of the total update's norm, and the fraction of the update that was kept.

    .venv/bin/python -m benchmarks merge_fidelity [--layer 10] [--sizes 1e-4,1e-3] [--merges 10,100,1000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from xgblora_cli.common.runtime import pick_device
from xgblora_cli.core.merge import FactorStack, exact_rows_into
from xgblora_cli.core.record import BoosterFactors
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.sources import resolve_model_dir


def ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers around |x| (8 significant bits), float64."""
    return torch.pow(2.0, torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - 7)


def updates(w0: torch.Tensor, count: int, size: float, coherent: bool, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` rank-1 factors (u: (d_out, 1), v: (1, d_in)) with entries of ``u v^T`` about ``size * std(W0)``."""
    g = torch.Generator().manual_seed(seed)
    d_out, d_in = w0.shape
    std = float(w0.float().std())
    base_u, base_v = torch.randn(d_out, 1, generator=g), torch.randn(1, d_in, generator=g)
    pairs = []
    for _ in range(count):
        u, v = torch.randn(d_out, 1, generator=g), torch.randn(1, d_in, generator=g)
        if coherent:
            u, v = base_u + 0.3 * u, base_v + 0.3 * v
        pairs.append((size * std * u, v))
    return pairs


def measure(w0: torch.Tensor, pairs: list, folder: Path, device: torch.device) -> dict[str, dict[str, float]]:
    exact = w0.to(torch.float64).clone()
    plain = w0.clone()
    save_file({"w": w0}, folder / "model.safetensors")
    merged = FactorStack()
    for t, (u, v) in enumerate(pairs):
        exact += u.double() @ v.double()  # the reference: every product and sum in float64
        plain += (u @ v).to(torch.bfloat16)
        merged.add(BoosterFactors(t, [0], {"w": (u, v)}))
    record = torch.empty(w0.shape, dtype=torch.bfloat16, device=device)  # the in-memory weight, as training computes it
    exact_rows_into(record, BaseWeights(folder), "w", *merged.stacked("w", torch.float64))
    record = record.cpu()
    update = exact - w0.to(torch.float64)
    ulp = ulp_bf16(exact)
    out = {}
    for name, value in (("plain", plain), ("record", record)):
        err = value.to(torch.float64) - exact
        out[name] = {
            "ulp_max": float((err.abs() / ulp).max()),
            "ulp_mean": float((err.abs() / ulp).mean()),
            "err_vs_update": float(err.norm() / update.norm()),
            "kept": float(((value.to(torch.float64) - w0.to(torch.float64)) * update).sum() / (update * update).sum()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--sizes", default="1e-4,1e-3")
    parser.add_argument("--merges", default="10,100,1000")
    parser.add_argument("--device", default="auto", help="where the merge runs: auto (CUDA if present), cpu, cuda")
    args = parser.parse_args()
    device = pick_device(args.device)
    name = f"model.layers.{args.layer}.mlp.down_proj.weight"
    w0 = BaseWeights(resolve_model_dir(args.model)).get(name).to(torch.bfloat16)
    print(f"weight {name} {tuple(w0.shape)} bf16, std {float(w0.float().std()):.4f}, merged on {device}")
    print(f"{'T':>5} {'size':>6} {'dirs':>9} | {'method':>6} {'ulp max':>8} {'ulp mean':>8} {'err/update':>10} {'kept':>6}")
    worst_record = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(x) for x in args.merges.split(",")):
            for size in (float(x) for x in args.sizes.split(",")):
                for coherent in (False, True):
                    result = measure(w0, updates(w0, count, size, coherent, seed=count), Path(tmp), device)
                    worst_record = max(worst_record, result["record"]["ulp_max"])
                    for method, r in result.items():
                        print(f"{count:>5} {size:>6.0e} {'coherent' if coherent else 'indep.':>9} | {method:>6} "
                              f"{r['ulp_max']:>8.3f} {r['ulp_mean']:>8.3f} {r['err_vs_update']:>10.3f} {r['kept']:>6.3f}")
    print(f"record_max_error_ulps={worst_record:.3f}")


if __name__ == "__main__":
    main()
