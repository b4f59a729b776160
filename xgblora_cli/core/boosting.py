"""The boosting engine: which blocks booster t adapts, attaching and detaching its adapters.

One engine serves XGBLoRA, COLA and LoRA: they differ only in the :class:`~xgblora_cli.recipe.BoosterPlan`
values (rank, blocks per booster k, steps per booster kappa). Every random choice is seeded by position:
booster t's blocks and its adapters' init depend on ``(seed, t)`` alone, so a resumed run makes the same choices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.runtime import seeded_generator
from xgblora_cli.core.adapter import LoRALinear
from xgblora_cli.core.record import BoosterFactors
from xgblora_cli.models.loading import find_blocks
from xgblora_cli.recipe import BoosterPlan, Recipe, RecipeError, resolve_plan


def booster_blocks(seed: int, index: int, num_layers: int, k: int, schedule: str = "random") -> list[int]:
    """The k distinct blocks (sorted) that booster ``index`` adapts.

    ``random`` (the paper's): drawn uniformly without replacement, independently for every booster. ``cycle``:
    boosters walk through a shuffled order of all blocks, k at a time, a fresh shuffle per cycle, so every block
    is adapted equally often (a block that would repeat across a cycle's end is replaced by the next one).
    """
    if schedule == "random":
        perm = torch.randperm(num_layers, generator=seeded_generator(seed, index, "blocks"))
        return sorted(perm[:k].tolist())
    chosen: list[int] = []
    position = index * k
    while len(chosen) < k:
        cycle, offset = divmod(position, num_layers)
        block = int(torch.randperm(num_layers, generator=seeded_generator(seed, cycle, "cycle"))[offset])
        if block not in chosen:
            chosen.append(block)
        position += 1
    return sorted(chosen)


def blocks_by_gradient(scores: dict[int, float], k: int, seed: int, index: int, sample: bool = False) -> list[int]:
    """The k blocks (sorted) booster ``index`` adapts under ``block_schedule: gradient``: the k largest
    ``scores`` (squared gradient norms; ties to the lower block), or, ``sample``, k drawn without replacement in
    proportion to them, seeded by ``(seed, index)`` (uniformly where every score is zero)."""
    blocks = sorted(scores)
    values = torch.tensor([max(scores[b], 0.0) for b in blocks], dtype=torch.float64)
    if not sample:
        order = sorted(blocks, key=lambda b: (-scores[b], b))
        return sorted(order[:k])
    weights = values if float(values.sum()) > 0 else torch.ones_like(values)
    picked = torch.multinomial(weights, k, replacement=False, generator=seeded_generator(seed, index, "blocks"))
    return sorted(blocks[i] for i in picked.tolist())


@dataclass
class ActiveBooster:
    """The booster being trained: its index, blocks and ``{weight name: adapter}``."""

    index: int
    blocks: list[int]
    adapters: dict[str, LoRALinear]
    attempt: int = 0  # > 0 after earlier tries of this booster diverged and were discarded

    def parameters(self) -> list[nn.Parameter]:
        return [p for name in sorted(self.adapters) for p in (self.adapters[name].lora_a, self.adapters[name].lora_b)]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The adapter factors by name, for checkpoints."""
        out = {}
        for name, adapter in self.adapters.items():
            out[f"{name}::A"] = adapter.lora_a.detach().cpu().clone()
            out[f"{name}::B"] = adapter.lora_b.detach().cpu().clone()
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, adapter in self.adapters.items():
                adapter.lora_a.copy_(tensors[f"{name}::A"])
                adapter.lora_b.copy_(tensors[f"{name}::B"])

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.parameters())


Targets = list[dict[str, tuple[nn.Module, str]]]


def find_targets(model: nn.Module, target_modules: list[str]) -> Targets:
    """Per block, ``{weight name: (parent module, attribute)}`` of every targeted ``nn.Linear``."""
    blocks = find_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    found: Targets = []
    seen: set[str] = set()
    linear_names: set[str] = set()
    for i, block in enumerate(blocks):
        layers: dict[str, tuple[nn.Module, str]] = {}
        for path, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            parent_path, _, attr = path.rpartition(".")
            linear_names.add(attr)
            if attr in target_modules:
                layers[f"{prefix}.{i}.{path}.weight"] = (block.get_submodule(parent_path), attr)
                seen.add(attr)
        found.append(layers)
    missing = [t for t in target_modules if t not in seen]
    if missing:
        have = ", ".join(sorted(linear_names)) or "none"
        raise UserError(f"target_modules: {', '.join(missing)} match no linear layer of the model's blocks; they have: {have}")
    return found


def plan_for(recipe: Recipe, model: nn.Module, source: str) -> BoosterPlan:
    """The recipe's boosting plan on this model's depth; a bad value is a UserError naming ``source`` and the key."""
    try:
        return resolve_plan(recipe, len(find_blocks(model)))
    except RecipeError as err:
        raise UserError(f"{source}: {err.key}: {err.message}") from None


def trainable_per_booster(targets: Targets, plan: BoosterPlan) -> int:
    """Adapter parameters of one booster (on the first k blocks): r * (d_in + d_out) per adapted layer."""
    total = 0
    for layers in targets[: plan.layers_per_booster]:
        for parent, attr in layers.values():
            layer = getattr(parent, attr)
            d_out, d_in = layer.out_features, layer.in_features
            total += plan.rank * (d_in + d_out)
    return total


def _frozen_forward(forward, *args, **kwargs):
    with torch.no_grad():
        return forward(*args, **kwargs)


def _checkpointed_forward(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


class BoostingEngine:
    """Attaches boosters to a model's blocks and takes them off again, as factors for the record.

    Folding a finished booster into the weights is :func:`xgblora_cli.core.merge.write_merged`'s job.

    Args:
        model: a causal LM whose base parameters are frozen.
        plan: rank, alpha, k and kappa.
        target_modules: attribute names of the linear layers to adapt in each block (``q_proj``, ...).
        seed: the run's seed.
        gradient_checkpointing: recompute activations of adapted-and-above blocks in backward.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: BoosterPlan,
        target_modules: list[str],
        seed: int,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.model = model
        self.plan = plan
        self.seed = seed
        self.gradient_checkpointing = gradient_checkpointing
        self.blocks = find_blocks(model)
        self.targets = find_targets(model, target_modules)

    def drawn_blocks(self, index: int) -> list[int]:
        """Booster ``index``'s blocks under a schedule drawn from the seed (random, cycle)."""
        return booster_blocks(self.seed, index, self.plan.num_layers, self.plan.layers_per_booster, self.plan.block_schedule)

    def layers(self, blocks: list[int]) -> dict[str, tuple[int, nn.Module]]:
        """``{weight name: (block, linear layer)}`` of the target weights of ``blocks`` (no booster attached)."""
        return {name: (block, getattr(parent, attr)) for block in blocks
                for name, (parent, attr) in sorted(self.targets[block].items())}

    def start(self, index: int, attempt: int = 0, blocks: list[int] | None = None,
              init: dict[str, torch.Tensor] | None = None) -> ActiveBooster:
        """Attach fresh adapters for booster ``index`` (a retry re-draws only the init).

        ``blocks``: the blocks to adapt (None: drawn by the schedule from the seed). ``init``: ``{weight name: V
        (r, d_in)}`` directions for ``A`` (booster_init: gradient), each row scaled to the norm the random init
        drew for it, so the rate means the same; ``B`` starts at zero either way.
        """
        blocks = self.drawn_blocks(index) if blocks is None else sorted(blocks)
        generator = seeded_generator(self.seed, index, "init" if attempt == 0 else f"init:{attempt}")
        adapters: dict[str, LoRALinear] = {}
        for block in blocks:
            for name in sorted(self.targets[block]):
                parent, attr = self.targets[block][name]
                adapter = LoRALinear(getattr(parent, attr), self.plan.rank, self.plan.scale, generator)
                if init is not None and name in init:
                    adapter.set_direction(init[name])
                setattr(parent, attr, adapter)
                adapters[name] = adapter
        self.set_block_modes(min(blocks))
        return ActiveBooster(index, blocks, adapters, attempt)

    def set_block_modes(self, lowest: int | None) -> None:
        """Blocks below ``lowest`` run under ``no_grad``; the rest are optionally checkpointed."""
        for i, block in enumerate(self.blocks):
            block.__dict__.pop("forward", None)
            if lowest is None:
                continue
            if i < lowest:
                block.forward = functools.partial(_frozen_forward, block.forward)
            elif self.gradient_checkpointing:
                block.forward = functools.partial(_checkpointed_forward, block.forward)

    def _detach(self, booster: ActiveBooster) -> None:
        for block in booster.blocks:
            for name, (parent, attr) in self.targets[block].items():
                adapter = getattr(parent, attr)
                if isinstance(adapter, LoRALinear):
                    setattr(parent, attr, adapter.base)
        self.set_block_modes(None)

    def finish(self, booster: ActiveBooster, factor: float = 1.0) -> BoosterFactors:
        """Detach a trained booster and return its factors (U times the plan's shrinkage and ``factor``, a merge
        line search's choice), the entry the record keeps and merging folds in."""
        shrink = self.plan.shrinkage * factor
        factors = {n: a.factors() for n, a in booster.adapters.items()}
        if shrink != 1.0:
            factors = {n: (u * shrink, v) for n, (u, v) in factors.items()}
        done = BoosterFactors(booster.index, booster.blocks, factors)
        self._detach(booster)
        return done

    def discard(self, booster: ActiveBooster) -> None:
        """Detach the booster without merging it."""
        self._detach(booster)
