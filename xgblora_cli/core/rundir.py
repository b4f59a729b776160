"""The run directory's layout, creation rules, metrics log and checkpoint of the booster in flight.

```
runs/<name>/
  recipe.yaml              the resolved recipe (what --resume, merge and eval read back)
  run.json                 base model folder, plan, prompt format, status (running | complete)
  metrics.jsonl            one line per logged step: step, loss, lr, booster, tokens_per_s
  boosters/                the append-only record of merged boosters (see record.py)
  checkpoint.safetensors   the booster in flight, its optimizer moments, RNG state, data position
  snapshots/               with train.snapshot_every: step_NNNNNN.safetensors, the state at that step
```
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import append_line, atomic_write_bytes, atomic_write_text

CHECKPOINT = "checkpoint.safetensors"
SNAPSHOTS = "snapshots"


@dataclass
class Checkpoint:
    """Where a run stands after ``step`` optimizer steps."""

    step: int
    recorded: int  # boosters in the record (stored as "merged" in the file)
    booster: int | None  # index of the booster in flight, None between boosters
    adapters: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict
    rng: torch.Tensor
    attempt: int = 0  # retry number of the booster in flight
    failures: int = 0  # consecutive discarded boosters
    blocks: list[int] | None = None  # the in-flight booster's blocks (a gradient schedule cannot redraw them)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def is_run(self) -> bool:
        return (self.path / "run.json").is_file() and self.recipe_file.is_file()

    def check_new(self, overwrite: bool) -> None:
        """Refuse a non-empty folder unless ``overwrite`` (then it is emptied at ``create``)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output_dir: {self.path} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not self.is_run():  # never delete a folder this tool did not write, --overwrite or not
                raise UserError(f"output_dir: {self.path} is not empty and holds no xgblora run; choose another output_dir")
            if not overwrite:
                raise UserError(f"output_dir: {self.path} holds another run; pass --resume to continue it, --force to replace it, or choose another output_dir")

    def create(self, recipe_yaml: str, info: dict, overwrite: bool) -> None:
        if overwrite and self.path.is_dir():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.recipe_file, recipe_yaml)
        self.write_info({**info, "status": "running"})

    def info(self) -> dict:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"{self.path}: not a run directory (run.json missing or corrupt)") from None

    def base_dir(self) -> Path:
        """The base model folder this run trained on; it must still exist (merge and eval replay onto it)."""
        if not self.is_run():
            raise UserError(f"{self.path}: not a run directory (expected recipe.yaml and run.json from 'xgblora train')")
        base_dir = Path(self.info()["model_dir"])
        if not (base_dir / "config.json").is_file():
            raise UserError(f"{self.path}: its base model folder {base_dir} is gone; restore it or re-run 'xgblora train'")
        return base_dir

    def recipe(self):  # -> Recipe
        """The recipe this run was started with (as stored in ``recipe.yaml``)."""
        from xgblora_cli.recipe_file import load_recipe

        return load_recipe(self.recipe_file)

    def prompt_format(self, tokenizer):  # -> PromptFormat
        """The prompt format the run trains with (stored in ``run.json``; older runs: resolved from the recipe)."""
        from xgblora_cli.data.prompts import PromptFormat

        stored = self.info().get("prompt_format")
        if stored:
            return PromptFormat.from_dict(stored)
        recipe = self.recipe()
        return PromptFormat.resolve(tokenizer, recipe.prompt_template, recipe.train.max_seq_len)

    def write_info(self, info: dict) -> None:
        atomic_write_text(self.path / "run.json", json.dumps(info, indent=2) + "\n")

    def log(self, row: dict) -> None:
        append_line(self.metrics_file, json.dumps(row))

    def truncate_metrics(self, step: int) -> None:
        """Drop logged rows after ``step`` (work lost by a crash, redone on resume)."""
        if not self.metrics_file.is_file():
            return
        kept = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the crash
            if row.get("step", 0) <= step:
                kept.append(line + "\n")
        atomic_write_text(self.metrics_file, "".join(kept))

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        from safetensors.torch import save

        tensors = {f"adapter::{k}": v.contiguous() for k, v in ckpt.adapters.items()}
        scalars: dict[str, dict[str, float]] = {}
        for pid, state in ckpt.optimizer["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    tensors[f"optim::{pid}::{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = float(value)
        tensors["rng"] = ckpt.rng
        meta = {
            "step": ckpt.step,
            "merged": ckpt.recorded,
            "booster": ckpt.booster,
            "attempt": ckpt.attempt,
            "failures": ckpt.failures,
            "blocks": ckpt.blocks,
            "optim_scalars": scalars,
            "param_groups": ckpt.optimizer.get("param_groups", []),
        }
        atomic_write_bytes(self.path / CHECKPOINT, save(tensors, metadata={"xgblora": json.dumps(meta)}))

    def load_checkpoint(self) -> Checkpoint | None:
        from safetensors import safe_open

        path = self.path / CHECKPOINT
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                meta = json.loads(handle.metadata()["xgblora"])
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:
            raise UserError(f"{path}: checkpoint unreadable ({err}); the run directory is corrupt") from None
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim::"):
                _, pid, name = key.split("::")
                state.setdefault(int(pid), {})[name] = value
        for pid, values in meta["optim_scalars"].items():
            for name, value in values.items():
                state.setdefault(int(pid), {})[name] = torch.tensor(value)
        adapters = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.startswith("adapter::")}
        optimizer = {"state": state, "param_groups": meta["param_groups"]}
        return Checkpoint(meta["step"], meta["merged"], meta["booster"], adapters, optimizer, tensors["rng"],
                          meta.get("attempt", 0), meta.get("failures", 0), meta.get("blocks"))

    def save_snapshot(self, step: int, recorded: int, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the state after ``step``: ``recorded`` boosters of the record plus the booster in flight's factors
        ``{weight name: (U (d_out, r), V (r, d_in))}`` (empty between boosters)."""
        from safetensors.torch import save

        tensors = {f"{name}::{part}": t.contiguous() for name, (u, v) in factors.items() for part, t in (("U", u), ("V", v))}
        meta = {"xgblora": json.dumps({"step": step, "recorded": recorded})}
        atomic_write_bytes(self.path / SNAPSHOTS / f"step_{step:06d}.safetensors", save(tensors, metadata=meta))

    def snapshot_steps(self) -> list[int]:
        folder = self.path / SNAPSHOTS
        return sorted(int(p.stem.split("_")[1]) for p in folder.glob("step_*.safetensors")) if folder.is_dir() else []

    def load_snapshot(self, step: int) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(boosters in the record at ``step``, the in-flight booster's factors) of a kept snapshot."""
        from safetensors import safe_open

        path = self.path / SNAPSHOTS / f"step_{step:06d}.safetensors"
        if not path.is_file():
            kept = self.snapshot_steps()
            have = f"it has steps {', '.join(map(str, kept))}" if kept else "it kept none (set train.snapshot_every)"
            raise UserError(f"--step {step}: {self.path} has no snapshot of step {step}; {have}")
        try:
            with safe_open(path, framework="pt") as handle:
                recorded = json.loads(handle.metadata()["xgblora"])["recorded"]
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:
            raise UserError(f"{path}: snapshot unreadable ({err}); the run directory is corrupt") from None
        names = sorted({key.rsplit("::", 1)[0] for key in tensors})
        return recorded, {name: (tensors[f"{name}::U"], tensors[f"{name}::V"]) for name in names}
