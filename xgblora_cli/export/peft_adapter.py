"""``xgblora export RUN --format peft``: the whole fine-tune as one PEFT LoRA adapter, exactly or at a chosen rank.

XGBLoRA's result is a sum of recorded rank-1 updates, so it *is* a LoRA adapter: per weight, the stacked factors
of every booster that touched it, ``U`` (d_out, R) as ``lora_B`` and ``V`` (R, d_in) as ``lora_A``, zero-padded to
the largest stacked rank r of any weight, with ``lora_alpha = r`` (PEFT's scale alpha / r = 1; the boosters'
own scales are already folded into U). Weights no booster touched get zero factors. With ``rank`` the adapter is
truncated per weight to the best rank-``rank`` approximation of its summed update, found from the small stacked
factors alone (QR of U and V^T, then the SVD of an R x R matrix, in float64; no dense d_out x d_in matrix), and
the fraction of each update's Frobenius norm that is kept is reported. The adapter is for the run's base model
(the unquantized original, also for a run trained on a 4-bit or 8-bit base). vLLM loads it with
``--enable-lora`` (its default ``max_lora_rank`` is 16: export with ``--rank 16`` or raise it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import publish_dir
from xgblora_cli.common.outputs import check_replace, has_file
from xgblora_cli.core.boosting import find_targets
from xgblora_cli.core.merge import FactorStack
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.models.loading import load_skeleton


@dataclass
class Truncation:
    """What a rank-limited export kept: per weight, the kept and total squared Frobenius norms of its update."""

    kept: dict[str, float]
    total: dict[str, float]

    @property
    def overall(self) -> float:
        total = sum(self.total.values())
        return math.sqrt(sum(self.kept.values()) / total) if total else 1.0

    def worst(self) -> tuple[str, float]:
        fractions = {name: math.sqrt(self.kept[name] / t) if t else 1.0 for name, t in self.total.items()}
        name = min(fractions, key=fractions.__getitem__)
        return name, fractions[name]


def best_rank(u: torch.Tensor, v: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The best rank-``rank`` factors of ``u @ v`` (u: (d_out, R), v: (R, d_in)) and (kept, total) squared norms.

    ``u = Qu Ru`` and ``v^T = Qv Rv`` (reduced QR), so ``u v = Qu (Ru Rv^T) Qv^T``; the SVD of the R x R middle
    ``A S B^T`` gives ``u v = (Qu A) S (Qv B)^T``, truncated to its ``rank`` largest singular values.
    """
    u, v = u.to(torch.float64), v.to(torch.float64)
    qu, ru = torch.linalg.qr(u)
    qv, rv = torch.linalg.qr(v.T)
    a, s, bt = torch.linalg.svd(ru @ rv.T)
    r = min(rank, s.numel())
    new_u = (qu @ a[:, :r]) * s[:r]
    new_v = bt[:r] @ qv.T
    return new_u, new_v, float((s[:r] ** 2).sum()), float((s**2).sum())


def adapter_tensors(stack: FactorStack, names: list[str], shapes: dict[str, tuple[int, int]], rank: int | None
                    ) -> tuple[dict[str, torch.Tensor], int, Truncation]:
    """PEFT's ``lora_A``/``lora_B`` tensors (fp32) for every targeted weight, the adapter's rank, what was kept."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    truncation = Truncation({}, {})
    for name in names:
        if not stack.factors.get(name):
            continue
        u, v = stack.stacked(name, torch.float64)
        if rank is not None:
            u, v, kept, total = best_rank(u, v, rank)
            truncation.kept[name], truncation.total[name] = kept, total
        factors[name] = (u, v)
    width = max((u.shape[1] for u, _ in factors.values()), default=1)  # never wider than the longest stack
    tensors = {}
    for name in names:
        d_out, d_in = shapes[name]
        b, a = torch.zeros(d_out, width, dtype=torch.float32), torch.zeros(width, d_in, dtype=torch.float32)
        if name in factors:
            u, v = factors[name]
            b[:, : u.shape[1]], a[: v.shape[0]] = u.to(torch.float32), v.to(torch.float32)
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    return tensors, width, truncation


EXPORT_MARKER = "xgblora_export.json"  # beside the adapter: which run it is, and the marker --force looks for


def adapter_config(base: str, target_modules: list[str], rank: int) -> dict:
    """``adapter_config.json``: one rank and alpha for every module (no ``rank_pattern``, which vLLM ignores)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": rank, "lora_alpha": rank,
            "target_modules": sorted(target_modules), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
            "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def export_peft(run_dir: Path, out: Path, rank: int | None = None, force: bool = False) -> dict:
    """Write the run as a PEFT LoRA adapter folder ``out``; returns a summary (rank, kept fractions, sizes)."""
    from safetensors.torch import save_file

    if rank is not None and rank <= 0:
        raise UserError(f"--rank: must be >= 1, got {rank}")
    run = RunDir(run_dir)
    base_dir = run.base_dir()
    recipe = run.recipe()
    check_replace(out, force, has_file(EXPORT_MARKER), "--out", "xgblora export")
    skeleton = load_skeleton(base_dir, recipe.trust_remote_code)
    targets = find_targets(skeleton, recipe.target_modules)
    shapes = {name: (getattr(p, a).out_features, getattr(p, a).in_features) for layers in targets for name, (p, a) in layers.items()}
    stack = FactorStack()
    for booster in Record(run.path).load():
        stack.add(booster)
    tensors, width, truncation = adapter_tensors(stack, sorted(shapes), shapes, rank)
    base_name = recipe.model if recipe.model.count("/") == 1 and not Path(recipe.model).exists() else str(base_dir)
    config = adapter_config(base_name, recipe.target_modules, width)

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / EXPORT_MARKER).write_text(json.dumps({"run": str(run.path), "rank": width, "exact": rank is None}, indent=2) + "\n")

    publish_dir(out, write)
    summary = {"rank": width, "weights": len(shapes), "touched": len(stack.factors), "bytes": (out / "adapter_model.safetensors").stat().st_size}
    if rank is not None:
        worst_name, worst = truncation.worst() if truncation.total else ("-", 1.0)
        summary.update(kept_overall=truncation.overall, kept_worst=worst, kept_worst_weight=worst_name)
    return summary
