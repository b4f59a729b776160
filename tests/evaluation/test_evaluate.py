"""`xgblora eval`: a run directory scored in memory equals its merged folder; the real SmolLM2 beats chance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, tiny_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.record import boosters_at
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.evaluation.evaluate import (
    EvalSettings,
    answer_shares,
    evaluate,
    shares_text,
    subset,
)
from xgblora_cli.evaluation.tasks import Question
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run

ARC_TEST = ROOT / "data" / "arc_easy_test_200.jsonl"
SST2_DEV = ROOT / "data" / "sst2_dev.tsv"


def test_subset_is_fixed_and_seeded() -> None:
    assert subset(100, 10, 0) == subset(100, 10, 0) and len(subset(100, 10, 0)) == 10
    assert subset(100, 10, 0) != subset(100, 10, 1) and subset(5, 10, 0) == list(range(5))


def test_settings_are_checked() -> None:
    with pytest.raises(UserError, match="unknown task 'mmlu2'; allowed: mmlu, boolq"):
        EvalSettings(tasks=["mmlu2"])
    with pytest.raises(UserError, match="--scoring: must be one of label, loglik, generate"):
        EvalSettings(tasks=["mmlu"], scoring="vibes")


def test_run_directory_in_memory_equals_its_merged_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    fields = tiny_recipe(tmp_path, tiny_model_dir, eval={"tasks": ["arc_easy", "perplexity"], "data": str(ARC_TEST), "limit": 12})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    merge_run(run_dir, tmp_path / "merged")
    settings = EvalSettings(tasks=["arc_easy", "perplexity"], data=str(ARC_TEST), limit=12, batch_size=4)
    in_memory = evaluate(str(run_dir), settings)
    merged = evaluate(str(tmp_path / "merged"), settings)
    base = evaluate(str(tiny_model_dir), settings)
    assert in_memory["tasks"]["arc_easy"] == merged["tasks"]["arc_easy"]
    assert in_memory["tasks"]["perplexity"]["perplexity"] == pytest.approx(merged["tasks"]["perplexity"]["perplexity"], rel=1e-5)
    assert in_memory["tasks"]["perplexity"]["perplexity"] != pytest.approx(base["tasks"]["perplexity"]["perplexity"], rel=1e-4)
    written = json.loads((run_dir / "eval" / "results.json").read_text())
    assert written["target"]["kind"] == "run" and written["settings"]["limit"] == 12

    # the recipe's eval block is what `xgblora eval RUN_DIR` runs without --task
    out = tmp_path / "results.json"
    result = run_cli("eval", str(run_dir), "--output", str(out))
    assert result.returncode == 0, result.stderr
    again = json.loads(out.read_text())
    assert set(again["tasks"]) == {"arc_easy", "perplexity"}
    assert again["tasks"]["arc_easy"]["n"] == 12 and again["tasks"]["arc_easy"]["accuracy"] == in_memory["tasks"]["arc_easy"]["accuracy"]


def test_cli_errors_are_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = run_cli("eval", str(tiny_model_dir), "--task", "nope")
    assert result.returncode == 2 and "unknown task 'nope'" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"instruction": 1}')
    result = run_cli("eval", str(tiny_model_dir), "--task", "arc_easy", "--data", str(bad))
    assert result.returncode == 2 and "expected a JSON list" in result.stderr


def test_real_smollm2_scores_above_chance_on_arc_easy(smol_dir: Path) -> None:
    results = evaluate("smollm2-135m", EvalSettings(tasks=["arc_easy"], data=str(ARC_TEST), limit=80, scoring="loglik"))
    arc = results["tasks"]["arc_easy"]
    assert arc["n"] == 80 and arc["chance"] == pytest.approx(0.25)
    assert arc["accuracy"] > 0.40, arc  # measured: 0.52 on all 200 (chance 0.25)


def test_generate_protocol_counts_unparsed_answers(tiny_model_dir: Path) -> None:
    results = evaluate(str(tiny_model_dir), EvalSettings(tasks=["arc_easy"], data=str(ARC_TEST), limit=4, scoring="generate"))
    arc = results["tasks"]["arc_easy"]
    assert arc["n"] == 4 and 0 <= arc["unparsed"] <= 4
    assert arc["correct"] <= arc["n"] - arc["unparsed"]  # an unparsed answer is never counted correct


def test_command_line_options_override_the_recipe_eval_block(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--shots 0 and --limit win over the block (a 0 used to be lost to `or`); --task replaces the block."""
    from xgblora_cli.evaluation.evaluate import eval_settings

    fields = tiny_recipe(tmp_path, tiny_model_dir, train={"max_steps": 2}, steps_per_booster=2,
                         eval={"tasks": ["mmlu"], "data": str(ARC_TEST), "limit": 50, "shots": 3, "scoring": "loglik"})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    block = eval_settings(str(run_dir), {"tasks": None, "data": None, "limit": None, "shots": None, "scoring": None})
    assert (block.tasks, block.limit, block.shots, block.scoring) == (["mmlu"], 50, 3, "loglik")
    given = eval_settings(str(run_dir), {"tasks": None, "data": None, "limit": 7, "shots": 0, "scoring": "label"})
    assert (given.tasks, given.data, given.limit, given.shots, given.scoring) == (["mmlu"], str(ARC_TEST), 7, 0, "label")
    other = eval_settings(str(run_dir), {"tasks": ["sst2"], "data": None, "limit": None, "shots": None, "scoring": None})
    assert (other.tasks, other.data, other.limit, other.shots, other.scoring) == (["sst2"], None, None, 0, "label")


def test_a_run_is_scored_in_the_prompt_format_it_was_trained_with(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A run trained with `plain` and max_seq_len 48 is evaluated with both, though its tokenizer has a chat template;
    its merged folder too; a base model gets its tokenizer's own (chat) format."""
    fields = tiny_recipe(tmp_path, tiny_model_dir, prompt_template="plain", train={"max_steps": 2, "max_seq_len": 48},
                         steps_per_booster=2)
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    settings = EvalSettings(tasks=["sst2"], data=str(SST2_DEV), limit=4)
    run_result = evaluate(str(run_dir), settings)
    assert run_result["prompt_format"] == {"template": "plain", "bos": [], "max_len": 48, "train_on_inputs": False}
    merge_run(run_dir, tmp_path / "merged")
    assert evaluate(str(tmp_path / "merged"), settings)["prompt_format"]["template"] == "plain"
    assert evaluate(str(tiny_model_dir), settings)["prompt_format"]["template"] == "chat"
    forced = evaluate(str(run_dir), EvalSettings(tasks=["sst2"], data=str(SST2_DEV), limit=4, template="chat"))
    assert forced["prompt_format"] == {"template": "chat", "bos": [], "max_len": 48, "train_on_inputs": False}


def test_snapshots_replay_a_run_as_it_was_after_step_n(tmp_path: Path, tiny_model_dir: Path) -> None:
    """snapshot_every keeps the record's length and the booster in flight; the last snapshot is the whole run,
    an earlier one is the run part-way (a booster in flight included), and a missing step is a one-line error."""
    fields = tiny_recipe(tmp_path, tiny_model_dir, train={"snapshot_every": 4})  # 8 steps, boosters of 3
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    assert RunDir(run_dir).snapshot_steps() == [4, 8]
    recorded, in_flight = RunDir(run_dir).load_snapshot(4)
    assert recorded == 1 and len(in_flight) > 0  # booster 0 merged at step 3, booster 1 one step in
    assert boosters_at(run_dir, 8)[-1].index == 2 and len(boosters_at(run_dir, 8)) == 3
    settings = dict(tasks=["perplexity"], data=str(ARC_TEST), limit=6)
    whole = evaluate(str(run_dir), EvalSettings(**settings))["tasks"]["perplexity"]["perplexity"]
    last = evaluate(str(run_dir), EvalSettings(**settings, step=8))["tasks"]["perplexity"]["perplexity"]
    middle = evaluate(str(run_dir), EvalSettings(**settings, step=4))["tasks"]["perplexity"]["perplexity"]
    assert last == pytest.approx(whole, rel=1e-6) and middle != pytest.approx(whole, rel=1e-4)
    assert (run_dir / "eval" / "results_step4.json").is_file()
    with pytest.raises(UserError, match=r"has no snapshot of step 5 \(it kept 4, 8; .*boosters ended at steps 3, 6, 8\)"):
        evaluate(str(run_dir), EvalSettings(**settings, step=5))


def test_a_step_where_a_booster_ended_needs_no_snapshot(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The record keeps the step each booster ended at, so the record alone replays the run to a booster's end:
    the same model as the snapshot of that step."""
    fields = tiny_recipe(tmp_path, tiny_model_dir, train={"snapshot_every": 3})  # 8 steps, boosters of 3
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    settings = dict(tasks=["perplexity"], data=str(ARC_TEST), limit=6)
    from_snapshot = evaluate(str(run_dir), EvalSettings(**settings, step=6))["tasks"]["perplexity"]["perplexity"]
    shutil.rmtree(run_dir / "snapshots")
    assert [b.index for b in boosters_at(run_dir, 6)] == [0, 1]
    from_record = evaluate(str(run_dir), EvalSettings(**settings, step=6))["tasks"]["perplexity"]["perplexity"]
    assert from_record == pytest.approx(from_snapshot, rel=1e-6)
    with pytest.raises(UserError, match=r"step 4 \(it kept none; set train.snapshot_every\) .*ended at steps 3, 6, 8"):
        boosters_at(run_dir, 4)


def _question(answer: int) -> Question:
    return Question(context="", options=[" negative", " positive"], prompt="", candidates=["negative", "positive"],
                    labels=["negative", "positive"], answer=answer)


def test_answer_shares_show_a_model_that_only_learned_the_majority_answer() -> None:
    questions = [_question(1), _question(1), _question(1), _question(0)]
    always_positive = answer_shares([1, 1, 1, 1], questions)  # 75% accuracy, one answer only
    assert always_positive == {"predicted": {"positive": 1.0}, "gold": {"negative": 0.25, "positive": 0.75}}
    assert answer_shares([0, -1, 1, 0], questions)["predicted"] == {"(none)": 0.25, "negative": 0.5, "positive": 0.25}
    assert shares_text(always_positive["gold"]) == "negative 25%, positive 75%"
    many = [Question("", ["a"] * 2, "", ["a"] * 2, [f"x{i}", f"y{i}"], 0) for i in range(6)]
    assert answer_shares([0] * 6, many) == {}  # free-text answers: shares would say nothing


def test_eval_results_carry_the_answer_distribution(tiny_model_dir: Path) -> None:
    sst2 = evaluate(str(tiny_model_dir), EvalSettings(tasks=["sst2"], data=str(SST2_DEV), limit=8))["tasks"]["sst2"]
    assert set(sst2["gold"]) <= {"negative", "positive"} and sum(sst2["gold"].values()) == pytest.approx(1.0)
    assert sum(sst2["predicted"].values()) == pytest.approx(1.0)
    # a class is answered right at most as often as it was both picked and true
    bound = sum(min(share, sst2["gold"].get(name, 0.0)) for name, share in sst2["predicted"].items())
    assert sst2["accuracy"] <= bound + 1e-9
