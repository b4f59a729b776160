"""GLUE TSVs (SST-2, RTE) -> questions: the shipped dev split, the folder layout, bad rows named, the hub path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from xgblora_cli.common.errors import UserError
from xgblora_cli.evaluation.tasks import glue

SST2_DEV = ROOT / "data" / "sst2_dev.tsv"


def test_the_shipped_sst2_dev_split_is_all_scorable() -> None:
    loaded = glue.load("sst2", SST2_DEV)
    assert len(loaded.questions) == 872 and loaded.skipped == 0
    q = loaded.questions[0]  # "it 's a charming and often affecting journey . \t1"
    assert q.labels == ["negative", "positive"] and q.answer == 1
    assert q.candidates == ["the correct answer is negative", "the correct answer is positive"]
    assert q.prompt.startswith("Please choose the sentiment of this movie review: it 's a charming")
    assert q.prompt.endswith("Answer format: negative/positive")
    assert q.context.endswith("Question: Is this sentence positive or negative?\nAnswer:")
    assert q.options == [" negative", " positive"]
    assert 0.45 < sum(x.answer for x in loaded.questions) / 872 < 0.55


def test_rte_in_a_glue_folder_with_quotes_and_bad_rows(tmp_path: Path) -> None:
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n"
        '0\t"Quoted" start, no closing quote.\tA sentence.\tentailment\n'
        "1\tPremise two.\tHypothesis two.\tnot_entailment\n"
        "2\tPremise three.\tHypothesis three.\tmaybe\n"
        "3\tonly two fields\tentailment\n"
    )
    loaded = glue.load("rte", tmp_path)
    assert [q.answer for q in loaded.questions] == [0, 1] and loaded.questions[0].labels == ["true", "false"]
    assert '"Quoted" start' in loaded.questions[0].prompt
    assert loaded.questions[1].options == [" True", " False"]
    assert loaded.skipped == 2
    assert loaded.skip_reasons == ["dev.tsv line 4: label 'maybe' is not one of 0/1/entailment/not_entailment",
                                   "dev.tsv line 5: 3 tab-separated fields, the header has 4"]


def test_wrong_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no GLUE file for task 'sst2'"):
        glue.load("sst2", tmp_path)
    (tmp_path / "x.tsv").write_text("question\tanswer\nq\t1\n")
    with pytest.raises(UserError, match=r"x.tsv: no 'sentence' column \(the header has question, answer\)"):
        glue.load("sst2", tmp_path / "x.tsv")
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(UserError, match="reads GLUE .tsv files"):
        glue.load("sst2", tmp_path / "x.json")


def test_the_hub_split_is_glue_validation(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return [{"sentence1": "P.", "sentence2": "H.", "label": 1, "idx": 0}, {"sentence1": "P.", "sentence2": "H.", "label": -1, "idx": 1}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    loaded = glue.load("rte", None)
    assert calls == [("nyu-mll/glue", "rte", "validation")]
    assert [q.answer for q in loaded.questions] == [1] and loaded.skipped == 1  # GLUE's hidden test label -1


def test_hub_failure_names_the_dataset_and_the_way_out(monkeypatch) -> None:
    import datasets

    def fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(UserError, match=r"could not read nyu-mll/glue \(sst2\) from the hub \(offline\); pass --data"):
        glue.load("sst2", None)
