"""Every row of docs/errors.md, built on a tiny model: one line on stderr, exit code 2, no file written or changed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import (
    ROOT,
    TRAIN_DATA,
    run_cli,
    save_tiny_model,
    tiny_recipe,
    write_recipe,
)
from tests.models.test_loading import pickle_copy, remote_code_folder
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run

DOC = ROOT / "docs" / "errors.md"
ROW = re.compile(r"^\| `([a-z0-9-]+)` \|.*\| `([^`]+)` \|$")


def documented() -> dict[str, str]:
    """id -> message excerpt, from the table in docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """A complete 2-step tiny run with one merged booster, to copy and damage."""
    tmp = tmp_path_factory.mktemp("finished")
    fields = tiny_recipe(tmp, tiny_model_dir, steps_per_booster=2, train={"max_steps": 2})
    start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    return tmp / "run"


class Case:
    """Builds one situation under ``tmp`` and returns the command's arguments."""

    def __init__(self, tmp: Path, tiny: Path, finished: Path) -> None:
        self.tmp, self.tiny, self.finished = tmp, tiny, finished

    def recipe(self, *extra: str, **fields) -> list[str]:
        return ["train", str(write_recipe(self.tmp / "r.yaml", **tiny_recipe(self.tmp, self.tiny, **fields))), *extra]

    def raw_recipe(self, text: str) -> list[str]:
        (self.tmp / "r.yaml").write_text(text)
        return ["train", str(self.tmp / "r.yaml")]

    def dataset(self, name: str, text: str) -> list[str]:
        (self.tmp / name).write_text(text)
        return self.recipe(dataset=str(self.tmp / name))

    def copied_run(self) -> tuple[Path, Path]:
        """A copy of the finished run under tmp (its recipe.yaml pointing there) and a recipe file for it."""
        run = shutil.copytree(self.finished, self.tmp / "run")
        stored = yaml.safe_load((run / "recipe.yaml").read_text())
        stored["output_dir"] = str(run)
        (run / "recipe.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
        return run, write_recipe(self.tmp / "r.yaml", **stored)

    def generate(self, target, name: str, text: str, *extra: str, output: str = "a.jsonl") -> list[str]:
        (self.tmp / name).write_text(text)
        return ["generate", str(target), "--input", str(self.tmp / name), "--output", str(self.tmp / output), *extra]

    def edit_info(self, run: Path, **changes) -> None:
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, **changes}))


def _booster_file(run: Path) -> Path:
    return next((run / "boosters").glob("booster_*.safetensors"))


CASES: dict[str, Callable[[Case], list[str]]] = {
    "malformed-yaml": lambda c: c.raw_recipe("model: [unclosed\n"),
    "not-a-mapping": lambda c: c.raw_recipe("- model\n- dataset\n"),
    "missing-recipe": lambda c: ["train", str(c.tmp / "nope.yaml")],
    "unknown-key": lambda c: c.recipe(rnak=1),
    "unknown-nested-key": lambda c: c.recipe("train.learning_rat=1e-3"),
    "wrong-type": lambda c: c.recipe("train.batch_size=two"),
    "bad-override": lambda c: c.recipe("train.max_steps"),
    "rank-zero": lambda c: c.recipe("rank=0"),
    "k-over-blocks": lambda c: c.recipe("layers_per_booster=9"),
    "kappa-over-steps": lambda c: c.recipe("steps_per_booster=100"),
    "negative-lr": lambda c: c.recipe("train.learning_rate=-1e-4"),
    "sharding-one-process": lambda c: c.recipe("train.sharding=fsdp"),
    "sharding-8bit": lambda c: c.recipe("train.sharding=fsdp", "quantization=8bit"),
    "bad-device": lambda c: c.recipe("device=gpu"),
    "missing-model": lambda c: c.recipe("model=./no/such/model"),
    "unreachable-hub-model": lambda c: c.recipe("model=no-such-org/no-such-model"),
    "pickle-model": lambda c: c.recipe(model=str(pickle_copy(c.tiny, c.tmp / "pickled"))),
    "remote-code-model": lambda c: c.recipe(model=str(remote_code_folder(c.tiny, c.tmp / "custom"))),
    "no-target-modules": lambda c: c.recipe("target_modules=[wq,wk]"),
    "missing-dataset": lambda c: c.recipe("dataset=missing.jsonl"),
    "invalid-json-dataset": lambda c: c.dataset("bad.json", "{instruction: oops"),
    "empty-dataset": lambda c: c.dataset("empty.jsonl", "\n"),
    "record-missing-field": lambda c: c.dataset("partial.jsonl", TRAIN_DATA.read_text().splitlines()[0] + "\n"
                                                + json.dumps({"instruction": "Say hi", "input": ""}) + "\n"),
    "no-chat-template": lambda c: c.recipe("prompt_template=chat", model=str(save_tiny_model(c.tmp / "plain", chat=False))),
    "output-not-a-run": lambda c: ((c.tmp / "run").mkdir(), (c.tmp / "run" / "notes.txt").write_text("mine"), c.recipe())[-1],
    "output-other-run": lambda c: ["train", str(c.copied_run()[1])],
    "resume-no-run": lambda c: c.recipe("--resume"),
    "resume-mismatch": lambda c: ["train", str(c.copied_run()[1]), "--resume", "seed=1"],
    "resume-corrupt-checkpoint": lambda c: (
        (run_recipe := c.copied_run()), (run_recipe[0] / "run.json").write_text(
            (run_recipe[0] / "run.json").read_text().replace('"complete"', '"running"')),
        (run_recipe[0] / "checkpoint.safetensors").write_bytes(b"\x00garbage"),
        ["train", str(run_recipe[1]), "--resume"])[-1],
    "merge-not-a-run": lambda c: ["merge", str(c.tmp), "--out", str(c.tmp / "m")],
    "merge-corrupt-record": lambda c: (_booster_file(run := c.copied_run()[0]).write_bytes(b"garbage"),
                                       ["merge", str(run), "--out", str(c.tmp / "m")])[-1],
    "merge-mismatched-base": lambda c: (c.edit_info(run := c.copied_run()[0], model_dir=str(save_tiny_model(c.tmp / "other", layers=4, seed=1, hidden=16))),
                                        ["merge", str(run), "--out", str(c.tmp / "m")])[-1],
    "merge-base-gone": lambda c: (c.edit_info(run := c.copied_run()[0], model_dir=str(c.tmp / "deleted")),
                                  ["merge", str(run), "--out", str(c.tmp / "m")])[-1],
    "merge-existing-out": lambda c: ((c.tmp / "m").mkdir(), (c.tmp / "m" / "x").write_text("x"),
                                     ["merge", str(c.copied_run()[0]), "--out", str(c.tmp / "m")])[-1],
    "bad-conversation-row": lambda c: c.dataset("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                                     {"role": "bot", "content": "hello"}]}) + "\n"),
    "no-format-matches": lambda c: c.dataset("qa.jsonl", json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n"),
    "bad-dataset-format": lambda c: c.recipe("dataset_format=csv"),
    "bad-report-to": lambda c: c.recipe("report_to=[mlflow]"),
    "eval-unknown-task": lambda c: ["eval", str(c.tiny), "--task", "mmlux"],
    "eval-glue-not-tsv": lambda c: ((c.tmp / "dev.json").write_text("[]"), ["eval", str(c.tiny), "--task", "sst2", "--data", str(c.tmp / "dev.json")])[-1],
    "eval-glue-no-column": lambda c: ((c.tmp / "dev.tsv").write_text("text\tlabel\nfine\t1\n"),
                                      ["eval", str(c.tiny), "--task", "sst2", "--data", str(c.tmp / "dev.tsv")])[-1],
    "eval-no-scorable-row": lambda c: ((c.tmp / "test.tsv").write_text("index\tsentence\n0\tno label here\n"),
                                       ["eval", str(c.tiny), "--task", "sst2", "--data", str(c.tmp / "test.tsv")])[-1],
    "eval-choice-without-data": lambda c: ["eval", str(c.tiny), "--task", "choice"],
    "eval-step-without-snapshot": lambda c: ["eval", str(c.copied_run()[0]), "--task", "perplexity", "--data", str(TRAIN_DATA), "--step", "1"],
    "export-bad-rank": lambda c: ["export", str(c.copied_run()[0]), "--format", "peft", "--rank", "0", "--out", str(c.tmp / "a")],
    "export-existing-out": lambda c: ((c.tmp / "a").mkdir(), (c.tmp / "a" / "x").write_text("x"),
                                      ["export", str(c.copied_run()[0]), "--format", "peft", "--out", str(c.tmp / "a")])[-1],
    "export-gguf-dtype": lambda c: ["export", str(c.copied_run()[0]), "--format", "gguf", "--dtype", "q4_k", "--out", str(c.tmp / "m.gguf")],
    "sweep-bad-val": lambda c: ["sweep", *c.recipe()[1:], "--val", "600", "--out", str(c.tmp / "sweep")],
    "sweep-bad-lrs": lambda c: ["sweep", *c.recipe()[1:], "--lrs", "1e-2,fast", "--out", str(c.tmp / "sweep")],
    "eval-missing-data": lambda c: ["eval", str(c.tiny), "--task", "arc_easy", "--data", "nope"],
    "model-is-a-file": lambda c: ((c.tmp / "weights.bin").write_bytes(bytes(range(256)) * 8), c.recipe(f"model={c.tmp / 'weights.bin'}"))[-1],
    "merge-force-foreign": lambda c: ((c.tmp / "m").mkdir(), (c.tmp / "m" / "important.txt").write_text("x"),
                                      ["merge", str(c.copied_run()[0]), "--out", str(c.tmp / "m"), "--force"])[-1],
    "export-force-foreign": lambda c: ((c.tmp / "a").mkdir(), (c.tmp / "a" / "x").write_text("x"),
                                       ["export", str(c.copied_run()[0]), "--format", "peft", "--out", str(c.tmp / "a"), "--force"])[-1],
    "export-gguf-force-foreign": lambda c: ((c.tmp / "m.gguf").write_bytes(b"not gguf"),
                                            ["export", str(c.copied_run()[0]), "--format", "gguf", "--out", str(c.tmp / "m.gguf"), "--force"])[-1],
    "sweep-foreign-out": lambda c: ((c.tmp / "mine").mkdir(), (c.tmp / "mine" / "x").write_text("x"),
                                    ["sweep", *c.recipe()[1:], "--out", str(c.tmp / "mine")])[-1],
    "generate-no-prompts": lambda c: c.generate(c.copied_run()[0], "empty.jsonl", "\n"),
    "generate-record-without-prompt": lambda c: c.generate(c.copied_run()[0], "p.jsonl", '{"instruction": "a"}\n{"instruction": ""}\n'),
    "generate-unknown-target": lambda c: c.generate("./no/such/model", "p.jsonl", '{"instruction": "a"}\n'),
    "generate-no-chat-template": lambda c: c.generate(save_tiny_model(c.tmp / "plain", chat=False), "p.jsonl", '{"instruction": "a"}\n', "--template", "chat"),
    "generate-existing-output": lambda c: ((c.tmp / "a.jsonl").write_text("{}\n"), c.generate(c.copied_run()[0], "p.jsonl", '{"instruction": "a"}\n'))[-1],
    "generate-force-foreign": lambda c: ((c.tmp / "notes.jsonl").write_text('{"mine": 1}\n'),
                                        c.generate(c.copied_run()[0], "p.jsonl", '{"instruction": "a"}\n', "--force", output="notes.jsonl"))[-1],
    "chat-compare-base-model": lambda c: ["chat", str(c.tiny), "--compare", "base"],
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_every_documented_error_has_a_case_and_back() -> None:
    assert sorted(documented()) == sorted(CASES)


@pytest.mark.parametrize("row", sorted(CASES))
def test_documented_error(row: str, tmp_path: Path, tiny_model_dir: Path, finished_run: Path) -> None:
    args = CASES[row](Case(tmp_path, tiny_model_dir, finished_run))
    before, base_before = snapshot(tmp_path), snapshot(tiny_model_dir)
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert documented()[row] in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert snapshot(tmp_path) == before, "the command wrote or changed files"
    assert snapshot(tiny_model_dir) == base_before
