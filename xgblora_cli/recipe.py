"""Typed recipe settings: the fields (each with its docstring), their validation, method presets, the boosting plan.

A recipe is plain data. Every field is checked for its range in ``__post_init__``; a bad value raises
:class:`RecipeError` naming the key, which the loader (:mod:`xgblora_cli.recipe_file`, which also checks types)
turns into a :class:`UserError` that also names the file. Nothing here imports torch.

XGBLoRA, COLA and LoRA are *presets*: default values of ``rank``, ``layers_per_booster`` and the
number of boosters, for one and the same boosting loop (see ``docs`` in the README).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from xgblora_cli.common.devices import DEVICE
from xgblora_cli.data.prompts import TEMPLATES

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # the one dtype table: names and bytes per value
DTYPES = tuple(DTYPE_BYTES)
SCORINGS = ("label", "loglik", "generate")
TRACKERS = ("none", "tensorboard", "wandb")
SHARDINGS = ("none", "fsdp")
SCHEDULES = ("random", "cycle", "gradient", "gradient_sample")
INITS = ("random", "gradient")
FORMATS = ("auto", "alpaca", "prompt_completion", "messages", "sharegpt")
QUANTIZATIONS = ("none", "4bit", "8bit")


@dataclass(frozen=True)
class Preset:
    """Defaults of one method. Exactly one of ``steps_per_booster`` / ``boosters`` is set.

    ``learning_rate`` is the method's default ``train.learning_rate``: boosters that live ten steps need a far
    larger rate than one adapter trained for the whole run (measured in docs/benchmarks.md).
    """

    rank: int
    layers_per_booster: int | str
    learning_rate: float
    steps_per_booster: int | None = None
    boosters: int | None = None
    booster_init: str = "random"
    rewarmup_steps: int = 0


PRESETS: dict[str, Preset] = {
    # Low-rank boosters on a few random blocks, merged often (the paper's method, which uses rank 1), each started
    # along its weights' loss gradient, its rate re-warmed over its first 5 steps: init, rate, rank 2 and the
    # re-warmup chosen by the defaults rule over the booster study (docs/boosters.md); random V needs 1e-2.
    "xgblora": Preset(rank=2, layers_per_booster=4, learning_rate=3e-3, steps_per_booster=10, booster_init="gradient",
                      rewarmup_steps=5),
    # Chain of LoRA: a few long rank-8 boosters over every block.
    "cola": Preset(rank=8, layers_per_booster="all", learning_rate=1e-3, boosters=3),
    # Plain LoRA: one booster over every block for the whole run, merged at export.
    "lora": Preset(rank=8, layers_per_booster="all", learning_rate=1e-3, boosters=1),
}


class RecipeError(ValueError):
    """A bad value for ``key``; the loader adds the file name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise RecipeError(key, message)


@dataclass
class TrainArgs:
    """The optimisation settings of a run (the ``train:`` block)."""

    max_steps: int = 100
    """Optimizer steps S of the whole run (the budget); one global learning-rate schedule spans them."""
    batch_size: int = 4
    """Examples per micro-batch; with several data-parallel ranks the global batch, divided among them."""
    grad_accum: int = 1
    """Micro-batches summed into each optimizer step (the effective batch is batch_size x grad_accum)."""
    learning_rate: float | None = None
    """Peak learning rate; unset: the method preset's (xgblora 3e-3 with boosters started along the gradient, cola and lora 1e-3; see Recipe.learning_rate)."""
    warmup_steps: int = 0
    """Linear warmup steps at the start of the run, before the cosine decay."""
    rewarmup_steps: int | None = None
    """A linear re-warmup of the rate over the first N steps of each booster (its first step at 1/N of the rate, on top of the run's schedule); unset: the method preset's (xgblora 5, cola and lora 0); 0: none."""
    u_lr_ratio: float = 1.0
    """U's learning rate over V's (LoRA+: U, the factor that starts at zero, learns faster); 1: one rate for both."""
    carry_moments: bool = False
    """A variant beyond the paper: each new booster's AdamW starts from the last merged booster's second moments and step count (parameter by parameter; first moments restart at zero) instead of fresh."""
    min_lr_ratio: float = 0.1
    """Where the cosine decay ends, as a fraction of the peak rate."""
    weight_decay: float = 0.0
    """AdamW's weight decay on the adapters."""
    max_grad_norm: float = 1.0
    """Clip the adapters' gradient norm to this (0: no clipping)."""
    max_seq_len: int = 512
    """Tokens per example at most (the prompt is cut from the left, the response keeps at least half); eval of the run uses it too."""
    sharding: str = "none"
    """none (every data-parallel rank holds the whole frozen base) or fsdp (each rank holds 1/N of it, FSDP2 under torchrun; with quantization: 4bit, 1/N of its NF4 codes)."""
    packing: bool = False
    """Pack several examples into each row of max_seq_len tokens (no attention across them); batch_size counts rows."""
    gradient_checkpointing: bool = False
    """Recompute the activations of the adapted-and-above blocks in backward (less memory, more compute)."""
    checkpoint_every: int = 25
    """Write a resumable checkpoint every N steps (and at every merge); a crash loses at most the steps since."""
    snapshot_every: int = 0
    """Keep the run's state every N steps in snapshots/ for `xgblora eval RUN --step N` (learning curves); 0: none (the steps where a booster ended need no snapshot)."""
    log_every: int = 1
    """Write a metrics.jsonl row every N steps."""
    max_failed_boosters: int = 3
    """Stop after this many diverged (discarded) boosters in a row."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "grad_accum", "max_seq_len", "checkpoint_every", "log_every", "max_failed_boosters"):
            _require(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "rewarmup_steps", "snapshot_every"):
            _require(getattr(self, key) is None or getattr(self, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(self, key)}")
        _require(self.learning_rate is None or self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.u_lr_ratio > 0, "train.u_lr_ratio", f"must be > 0, got {self.u_lr_ratio}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        _require(self.max_seq_len >= 8, "train.max_seq_len", f"must be >= 8, got {self.max_seq_len}")
        _require(self.sharding in SHARDINGS, "train.sharding", f"must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")


@dataclass
class EvalArgs:
    """What ``xgblora eval RUN_DIR`` runs when no ``--task`` is given (the ``eval:`` block)."""

    tasks: list[str] = field(default_factory=list)
    """Tasks `xgblora eval RUN` runs without --task (e.g. [sst2])."""
    data: str = ""
    """Local data for those tasks: a file, or a folder with glue/, commonsense/ or mmlu/ subfolders (empty: the hub)."""
    limit: int | None = None
    """Score a fixed, seeded subset of N questions per task (null: all)."""
    shots: int = 0
    """MMLU: worked examples from the dev split (0-5)."""
    scoring: str = "label"
    """label (the answer in the training format after the run's prompt), loglik or generate."""

    def __post_init__(self) -> None:
        _require(self.limit is None or self.limit >= 1, "eval.limit", f"must be >= 1, got {self.limit}")
        _require(0 <= self.shots <= 5, "eval.shots", f"must be in 0..5, got {self.shots}")
        _require(self.scoring in SCORINGS, "eval.scoring", f"must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")


@dataclass
class Recipe:
    """A whole training recipe (the top level of the YAML file)."""

    model: str
    """An alias (smollm2-135m), a .gguf file, a local Hugging Face folder (safetensors) or a hub id; never written to."""
    dataset: str
    """Training data: a local .json/.jsonl file of {instruction, input, output} records, or a hub dataset name."""
    output_dir: str
    """The run directory (created; replaced only with --overwrite, continued with --resume)."""
    method: str = "xgblora"
    """xgblora, cola or lora: the preset that fills in rank, layers_per_booster, steps_per_booster and the learning rate."""
    rank: int | None = None
    """Adapter rank r (unset: the preset's; xgblora 2, cola/lora 8)."""
    alpha: float | None = None
    """Adapter scale is alpha / r (unset: 2 x rank)."""
    layers_per_booster: int | str | None = None
    """k, transformer blocks each booster adapts, drawn at random, or 'all' (unset: xgblora 4, cola/lora all)."""
    steps_per_booster: int | None = None
    """kappa, optimizer steps each booster trains before it is merged (unset: xgblora 10, cola S/3, lora S)."""
    block_schedule: str = "random"
    """random (the paper: k blocks drawn independently for each booster), cycle (a shuffled cycle through all blocks, k at a time, so every block is adapted equally often), gradient (the k blocks whose weights have the largest loss gradient at the booster's start; costs a forward and backward through every block per booster) or gradient_sample (k blocks drawn in proportion to those gradient norms)."""
    booster_init: str | None = None
    """(unset: the preset's: gradient for xgblora, random for cola and lora) random (V drawn Kaiming-uniform, the paper's) or gradient (V from the top right singular vectors of each adapted weight's loss gradient on the booster's first init_batches micro-batches, found by power iteration; U starts at zero either way, so merges stay exact)."""
    init_batches: int = 1
    """Micro-batches (from the booster's own window) whose gradient sets V (booster_init: gradient) and ranks the blocks (block_schedule: gradient*). V costs no extra pass while init_batches <= train.grad_accum (it is set inside the booster's first step, from that step's own forward and backward); beyond that, and for ranking blocks, each costs one extra forward and backward per booster."""
    shrinkage: float = 1.0
    """Each booster's update is multiplied by this when it is merged (gradient boosting's shrinkage); 1: merged as trained."""
    merge_search_batches: int = 0
    """A line search at each merge: the booster's update is scaled by 1, 1/2 or 0, whichever gives the lowest loss on this many micro-batches of the next window (not yet trained on); each costs three forward passes per booster; 0: merged as trained."""
    average_last: int = 0
    """The run ends with the mean of the weights at its last N booster ends (tail averaging): the same as its last N boosters merged at N/N, (N-1)/N, ... 1/N, so no single late booster decides the end model. Training is unchanged; the mean is one more record entry once the last booster merges, and eval --step at an earlier step gives the weights as trained; 0 or 1: the last booster's end."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Linear layers adapted in each chosen block (q, k, v, o, gate, up, down _proj)."""
    dtype: str = "float32"
    """float32, bfloat16 or float16 for the base weights (adapters are always fp32)."""
    quantization: str = "none"
    """none, 4bit (NF4) or 8bit: the blocks' linear layers through bitsandbytes (4bit with sharding: fsdp through torchao's NF4); dtype is then the compute dtype."""
    seed: int = 0
    """Seeds block draws, adapter init and data order, by position (a resumed run draws the same)."""
    dataset_split: str = "train"
    """The split of a hub dataset."""
    dataset_format: str = "auto"
    """auto (detected per file), alpaca, prompt_completion, messages (OpenAI roles) or sharegpt (conversations)."""
    dataset_columns: dict[str, str] = field(default_factory=dict)
    """Rename columns before reading, {format name: your column}, e.g. {instruction: question, output: answer}."""
    train_on_inputs: bool = False
    """Put the loss on every token, prompts and user turns too (default: only on what the model answers)."""
    prompt_template: str = "auto"
    """auto (the tokenizer's chat template when it has one, else plain), chat or plain (Alpaca text)."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Run Python code shipped with a model (auto_map); off unless you set it."""
    allow_pickle: bool = False
    """Accept a model folder with only pickle weights (.bin/.pt); converted once to safetensors."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Where metrics.jsonl's rows are also streamed: none, tensorboard (<run>/tensorboard), wandb, or a list."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """The optimisation settings (the train: block)."""
    eval: EvalArgs = field(default_factory=EvalArgs)
    """What `xgblora eval RUN` runs without --task (the eval: block)."""

    def __post_init__(self) -> None:
        _require(self.method in PRESETS, "method", f"must be one of {', '.join(PRESETS)}, got {self.method!r}")
        _require(self.rank is None or self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha is None or self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        k = self.layers_per_booster
        _require(
            k is None or k == "all" or (isinstance(k, int) and k >= 1),
            "layers_per_booster",
            f"must be an integer >= 1 or 'all', got {k!r}",
        )
        kappa = self.steps_per_booster
        _require(kappa is None or kappa >= 1, "steps_per_booster", f"must be >= 1, got {kappa}")
        _require(
            kappa is None or kappa <= self.train.max_steps,
            "steps_per_booster",
            f"must be <= train.max_steps ({self.train.max_steps}), got {kappa}",
        )
        _require(len(self.target_modules) > 0, "target_modules", "must name at least one module, e.g. [q_proj, v_proj]")
        _require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _require(self.quantization in QUANTIZATIONS, "quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        _require(self.prompt_template in TEMPLATES, "prompt_template", f"must be one of {', '.join(TEMPLATES)}, got {self.prompt_template!r}")
        _require(bool(DEVICE.match(self.device)), "device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for key in ("model", "dataset", "output_dir"):
            _require(bool(getattr(self, key).strip()), key, "must not be empty")
        _require(self.block_schedule in SCHEDULES, "block_schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.block_schedule!r}")
        _require(self.booster_init is None or self.booster_init in INITS, "booster_init", f"must be one of {', '.join(INITS)}, got {self.booster_init!r}")
        _require(self.init_batches >= 1, "init_batches", f"must be >= 1, got {self.init_batches}")
        _require(0 < self.shrinkage <= 1, "shrinkage", f"must be in (0, 1], got {self.shrinkage}")
        _require(self.merge_search_batches >= 0, "merge_search_batches", f"must be >= 0, got {self.merge_search_batches}")
        _require(self.average_last >= 0, "average_last", f"must be >= 0, got {self.average_last}")
        _require(self.dataset_format in FORMATS, "dataset_format", f"must be one of {', '.join(FORMATS)}, got {self.dataset_format!r}")
        _require(self.train.sharding == "none" or self.quantization in ("none", "4bit"), "train.sharding",
                 f"fsdp shards a bf16/fp16/fp32 or 4bit base; a {self.quantization} base is not supported with it (use quantization: none or 4bit)")
        unknown = [name for name in self.report_to if name not in TRACKERS]
        _require(not unknown, "report_to", f"must be none, tensorboard, wandb or a list of them, got {unknown[0]!r}" if unknown else "")

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``train.learning_rate``, or the method preset's when the recipe leaves it out."""
        return self.train.learning_rate if self.train.learning_rate is not None else PRESETS[self.method].learning_rate

    @property
    def rewarmup_steps(self) -> int:
        """``train.rewarmup_steps``, or the method preset's when the recipe leaves it out."""
        return self.train.rewarmup_steps if self.train.rewarmup_steps is not None else PRESETS[self.method].rewarmup_steps

    @property
    def resolved_booster_init(self) -> str:
        """``booster_init``, or the method preset's when the recipe leaves it out."""
        return self.booster_init if self.booster_init is not None else PRESETS[self.method].booster_init

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data with the preset's learning rate, re-warmup and booster init filled in (what run
        directories store, so a run reads back the same after a preset changes)."""
        data = dataclasses.asdict(self)
        data["train"]["learning_rate"] = self.learning_rate
        data["train"]["rewarmup_steps"] = self.rewarmup_steps
        data["booster_init"] = self.resolved_booster_init
        return data


@dataclass(frozen=True)
class BoosterPlan:
    """The concrete boosting schedule of a recipe on a model with ``num_layers`` blocks."""

    rank: int
    alpha: float
    layers_per_booster: int
    steps_per_booster: int
    num_boosters: int
    num_layers: int
    block_schedule: str = "random"
    booster_init: str = "random"
    init_batches: int = 1
    shrinkage: float = 1.0
    merge_search_batches: int = 0
    average_last: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def probes_blocks(self) -> bool:
        """Whether each booster's blocks are chosen from gradient norms (a probe through every block)."""
        return self.block_schedule.startswith("gradient")

    @property
    def probes(self) -> bool:
        """Whether a booster's start needs the loss gradient (to choose its blocks or to set V)."""
        return self.probes_blocks or self.booster_init == "gradient"


def resolve_plan(recipe: Recipe, num_layers: int) -> BoosterPlan:
    """Fill the unset values from the method preset and check them against the model's depth."""
    preset = PRESETS[recipe.method]
    rank = recipe.rank if recipe.rank is not None else preset.rank
    alpha = recipe.alpha if recipe.alpha is not None else 2.0 * rank
    k = recipe.layers_per_booster if recipe.layers_per_booster is not None else preset.layers_per_booster
    k = num_layers if k == "all" else int(k)
    if k > num_layers:
        raise RecipeError("layers_per_booster", f"must be <= the model's {num_layers} blocks, got {k}")
    steps = recipe.train.max_steps
    if recipe.steps_per_booster is not None:
        kappa = recipe.steps_per_booster
    elif preset.steps_per_booster is not None:
        kappa = min(preset.steps_per_booster, steps)
    else:
        kappa = math.ceil(steps / preset.boosters)
    boosters = math.ceil(steps / kappa)
    if recipe.average_last > boosters:
        raise RecipeError("average_last", f"must be <= the run's {boosters} boosters (train.max_steps / steps_per_booster), got {recipe.average_last}")
    return BoosterPlan(rank, float(alpha), k, kappa, boosters, num_layers, recipe.block_schedule,
                       recipe.resolved_booster_init, recipe.init_batches, recipe.shrinkage, recipe.merge_search_batches,
                       recipe.average_last)


def field_docs(cls: type) -> dict[str, str]:
    """``{field: the docstring under it}`` of a settings dataclass, read from its source (litgpt's style)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = following.value.value
    return docs
