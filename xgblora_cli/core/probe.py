"""A booster's start along the loss gradient (its blocks chosen by gradient norm, its V set from the gradient), and
its end: a line search for the scale it is merged at.

With ``block_schedule: gradient`` (or ``gradient_sample``) a probe through every block ranks the blocks by the
squared norm of their weights' loss gradient on the window's first ``init_batches`` micro-batches, and booster t
takes the k largest (or k drawn in proportion). With ``booster_init: gradient`` a second probe, through the
chosen blocks only, keeps each adapted weight's flow (inputs and output gradients) and sets V to the top ``r``
right singular vectors of ``dL/dW`` by power iteration (:mod:`xgblora_cli.core.gradient`); U stays zero, so the
model is unchanged when the booster attaches and merges stay exact. The probes read the micro-batches the
booster then trains on, with the merged model as it is; they never touch a ``.grad``. Each costs about one
training step's forward and backward per micro-batch, once per booster (amortised over kappa steps).

With ``merge_search_batches: N`` a finished booster is merged at the scale among 1, 1/2 and 0 whose loss is the
lowest on the next window's first N micro-batches (data no booster has trained on yet): boosting's line search,
three forward passes a micro-batch. A booster that would make the model worse there is merged at half, or not
at all.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from xgblora_cli.common.runtime import SINGLE, Ranks, seeded_generator
from xgblora_cli.core.boosting import BoostingEngine, blocks_by_gradient
from xgblora_cli.core.gradient import LayerFlow, block_scores, capture, recording, top_singular
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.models.sharding import root_gathered


class BoosterProbe:
    """Chooses a booster's blocks and init from the gradient, for a :class:`BoostingEngine` and a run's setup."""

    def __init__(self, engine: BoostingEngine, setup, ranks: Ranks = SINGLE) -> None:  # setup: core.train.Setup
        self.engine = engine
        self.setup = setup
        self.ranks = ranks
        self.plan = engine.plan

    def batches(self, step: int) -> list:
        """The window's first ``init_batches`` micro-batches of this rank (those its first steps train on)."""
        args, part = self.setup.recipe.train, self.ranks.slice(self.setup.recipe.train.batch_size)
        return [self.setup.stream.batch(step * args.grad_accum + j, part).to(self.setup.device)
                for j in range(self.plan.init_batches)]

    def sets_v_in_step(self, attempt: int, micro_batches: int) -> bool:
        """Whether booster_init: gradient sets V inside the booster's first step (:class:`FirstStepInit`): a first
        attempt, and a step of ``micro_batches`` that covers ``init_batches``."""
        return self.plan.booster_init == "gradient" and attempt == 0 and self.plan.init_batches <= micro_batches

    def needs_pass(self, v_in_step: bool) -> bool:
        """Whether a booster's start runs a probe pass of its own: to rank the blocks, or to set V outside the step."""
        return self.plan.probes_blocks or (self.plan.booster_init == "gradient" and not v_in_step)

    def _loss(self, count: int):
        model = self.setup.model
        return lambda batch: causal_lm_loss(model, batch)[0] / count

    def start(self, index: int, step: int, attempt: int = 0, directions: bool = True,
              ) -> tuple[list[int] | None, dict[str, torch.Tensor] | None]:
        """(blocks, ``{weight name: V (r, d_in)}``) for booster ``index`` starting at ``step``; None where the plan
        draws them instead, or where ``directions`` is False (V is then set inside the booster's first step:
        :class:`FirstStepInit`). A retry after divergence (``attempt > 0``) starts from a random V."""
        batches = self.batches(step)
        model = self.setup.model
        was_training = model.training
        model.train()
        try:
            with root_gathered(model):
                blocks = self.choose_blocks(index, batches) if self.plan.probes_blocks else self.engine.drawn_blocks(index)
                init = None
                if self.plan.booster_init == "gradient" and attempt == 0 and directions:
                    init = self.directions(index, blocks, batches)
        finally:
            self.engine.set_block_modes(None)
            model.train(was_training)
        return (blocks if self.plan.probes_blocks else None), init

    def choose_blocks(self, index: int, batches: list) -> list[int]:
        """The k blocks with the largest (or drawn in proportion to) squared gradient norms."""
        everything = list(range(self.plan.num_layers))
        self.engine.set_block_modes(0)
        scores = block_scores(self.engine.layers(everything), self.engine.blocks[0], batches,
                              self._loss(len(batches)), self.ranks)
        return blocks_by_gradient(scores, self.plan.layers_per_booster, self.engine.seed, index,
                                  sample=self.plan.block_schedule == "gradient_sample")

    def directions(self, index: int, blocks: list[int], batches: list) -> dict[str, torch.Tensor]:
        """``{weight name: V (r, d_in)}``: the top right singular vectors of each adapted weight's gradient, from a
        forward and backward of its own through the chosen blocks."""
        lowest = min(blocks)
        self.engine.set_block_modes(lowest)
        layers = {name: layer for name, (_, layer) in self.engine.layers(blocks).items()}
        return self.directions_from(index, capture(layers, self.engine.blocks[lowest], batches, self._loss(len(batches))))

    def directions_from(self, index: int, flows: dict[str, LayerFlow]) -> dict[str, torch.Tensor]:
        """``{weight name: V (r, d_in)}`` from each adapted weight's flow (inputs and output gradients); a weight
        no gradient reached is left out (it keeps its random init)."""
        generator = seeded_generator(self.engine.seed, index, "probe")
        init = {}
        for name, flow in flows.items():  # every rank, every layer: the power iteration's sums are collective
            sigma, _, v = top_singular(flow, self.plan.rank, generator, ranks=self.ranks)
            if float(sigma[0]) > 0:
                init[name] = v
        return init

    MERGE_SCALES = (1.0, 0.5, 0.0)

    @torch.no_grad()
    def merge_scale(self, booster, step: int) -> float:  # booster: core.boosting.ActiveBooster
        """The scale (of ``MERGE_SCALES``; ties to the larger) at which ``booster`` lowers the loss most on the
        ``merge_search_batches`` micro-batches from ``step`` on, summed over data-parallel ranks."""
        batches = [self.setup.stream.batch(step * self.setup.recipe.train.grad_accum + j,
                                           self.ranks.slice(self.setup.recipe.train.batch_size)).to(self.setup.device)
                   for j in range(self.plan.merge_search_batches)]
        model, adapters = self.setup.model, list(booster.adapters.values())
        scales = [adapter.scale for adapter in adapters]
        losses = []
        was_training = model.training
        model.eval()
        try:
            with root_gathered(model):
                for factor in self.MERGE_SCALES:
                    for adapter, scale in zip(adapters, scales):
                        adapter.scale = scale * factor
                    total = torch.zeros((), dtype=torch.float64)
                    for batch in batches:
                        loss, count = causal_lm_loss(model, batch)
                        total += float(loss) * count
                    losses.append(float(self.ranks.sum_(total)))
        finally:
            for adapter, scale in zip(adapters, scales):
                adapter.scale = scale
            model.train(was_training)
        best = min(losses)
        return next(f for f, loss in zip(self.MERGE_SCALES, losses) if loss == best)


class FirstStepInit:
    """V set from the gradient inside a booster's first optimizer step, instead of by a probe pass of its own.

    With U = 0 the model's output does not depend on V, so the first step's forward and backward are what the
    probe would run. While the step's first ``init_batches`` micro-batches pass, each adapter records its flow (its
    input ``X`` (n, d_in) and output gradient ``Gy`` (n, d_out)); then :meth:`apply` sets V from the flows (the
    probe's power iteration, same seed) and re-forms U's gradient for the new V, ``dL/dB = scale * Gy^T X A^T``
    (d_out, r), summed over those micro-batches (V's own gradient is zero while U is). The step then equals
    probe-then-step up to rounding, one forward and backward per booster cheaper. Use as a context manager around
    the step's micro-batches (the hooks are on inside it until :meth:`apply`); every data-parallel rank calls
    :meth:`apply` after the same micro-batch (its sums are collective).
    """

    def __init__(self, probe: BoosterProbe, booster) -> None:  # booster: core.boosting.ActiveBooster
        self.probe = probe
        self.booster = booster
        self.batches = probe.plan.init_batches
        self._stack = ExitStack()
        self.flows: dict[str, LayerFlow] = {}

    def __enter__(self) -> "FirstStepInit":
        self.flows = self._stack.enter_context(recording(dict(self.booster.adapters)))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @torch.no_grad()
    def apply(self) -> None:
        """Stop recording; point each adapter's V along its flow's top right singular vectors and set U's gradient
        (``lora_b.grad``, (d_out, r)) to what the recorded micro-batches give for that V."""
        self._stack.close()
        init = self.probe.directions_from(self.booster.index, self.flows)
        for name, v in init.items():
            adapter = self.booster.adapters[name]
            adapter.set_direction(v)
            grad = adapter.scale * self.flows[name].matvec(adapter.lora_a.t())  # zeros where this rank's flow is empty
            adapter.lora_b.grad = grad.to(adapter.lora_b)
        self.flows = {}
