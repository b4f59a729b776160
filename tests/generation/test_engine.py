"""Generation: a run directory answers exactly as its merged folder does; batches as single prompts; a stop flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_recipe
from xgblora_cli.core.opening import open_target
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.generation.engine import (
    Sampling,
    StopFlag,
    batch,
    prepare_for_generation,
    stream,
)
from xgblora_cli.generation.prompting import record_prompt
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("gen")
    fields = tiny_recipe(folder, tiny_model_dir, train={"learning_rate": 5e-2})
    return start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)


PROMPTS = [{"instruction": "Which is a mammal? Answer format: answer1/answer2", "input": ""},
           {"instruction": "Name a planet.", "input": ""}, {"instruction": "Why is the sky blue at noon?", "input": ""}]


def test_a_run_answers_as_its_merged_folder_and_unlike_its_base(tiny_run: Path, tmp_path: Path) -> None:
    merge_run(tiny_run, tmp_path / "merged")
    run, merged = open_target(tiny_run, device="cpu"), open_target(tmp_path / "merged", device="cpu")
    base = open_target(run.base_dir, device="cpu")
    assert run.prompt == merged.prompt and merged.kind == "merged" and merged.base_dir == run.base_dir
    sampling = Sampling(max_new_tokens=12)
    texts = {}
    for name, opened in (("run", run), ("merged", merged), ("base", base)):
        prepare_for_generation(opened.model)
        ids = record_prompt(run.prompt, opened.tokenizer, PROMPTS[0])
        pieces: list[str] = []
        answer = stream(opened.model, opened.tokenizer, ids, sampling, pieces.append)
        assert "".join(pieces).strip() == answer.text.strip() and answer.first_token_s is not None
        texts[name] = (answer.text, answer.tokens)
    assert texts["run"] == texts["merged"]
    inputs = torch.tensor([ids])
    assert not run.model(input_ids=inputs).logits.allclose(base.model(input_ids=inputs).logits)  # the boosters changed it


def test_a_batch_answers_as_one_prompt_at_a_time(tiny_run: Path) -> None:
    opened = open_target(tiny_run, device="cpu")
    prepare_for_generation(opened.model)
    sampling = Sampling(max_new_tokens=8)
    prompts = [record_prompt(opened.prompt, opened.tokenizer, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # different lengths: the batch is left-padded
    together = batch(opened.model, opened.tokenizer, prompts, sampling)
    alone = [batch(opened.model, opened.tokenizer, [p], sampling)[0] for p in prompts]
    assert [a.text for a in together] == [a.text for a in alone]


def test_a_stop_flag_ends_the_answer_at_the_next_token(tiny_run: Path) -> None:
    opened = open_target(tiny_run, device="cpu")
    prepare_for_generation(opened.model)
    flag = StopFlag()
    ids = record_prompt(opened.prompt, opened.tokenizer, PROMPTS[1])

    def stop_after_first(text: str) -> None:
        flag.set = True

    answer = stream(opened.model, opened.tokenizer, ids, Sampling(max_new_tokens=200), stop_after_first, flag)
    assert answer.stopped and answer.tokens < 10


def test_sampling_is_checked_and_seeded() -> None:
    with pytest.raises(Exception, match="--temperature: must be >= 0"):
        Sampling(temperature=-1)
    with pytest.raises(Exception, match=r"--top-p: must be in \(0, 1\]"):
        Sampling(top_p=0)
    assert Sampling().generate_kwargs() == {"do_sample": False}
    assert Sampling(temperature=0.7, top_p=0.9).generate_kwargs() == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
