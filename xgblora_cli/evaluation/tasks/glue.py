"""GLUE classification tasks (SST-2 sentiment, RTE entailment) from the release's TSV files or the hub.

Local data is GLUE's own layout: ``<data>/SST-2/dev.tsv`` (``sentence<TAB>label``, label 0/1) and
``<data>/RTE/dev.tsv`` (``index<TAB>sentence1<TAB>sentence2<TAB>label``, label ``entailment`` /
``not_entailment``), read with quoting off (some RTE sentences start with ``"``). ``--data`` may also be one
``.tsv`` file. Without ``--data`` the hub's ``nyu-mll/glue`` validation split is read (GLUE's test labels are
not public, so its dev split is the test set everywhere). Every row becomes an LLM-Adapters record
(``instruction`` ending in an ``Answer format:`` line, ``output``, ``answer``), the format the shipped training
slices use, and is scored by the one parser in :mod:`xgblora_cli.evaluation.tasks.commonsense`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xgblora_cli.common.errors import UserError
from xgblora_cli.data.hubdata import hub_rows
from xgblora_cli.evaluation.tasks import Loaded, Question, collect
from xgblora_cli.evaluation.tasks.commonsense import to_question


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its folder, hub config, the TSV columns it needs and its prompt."""

    folder: str
    hub_config: str
    columns: tuple[str, ...]
    labels: tuple[str, ...]  # answer labels by class index (GLUE's label 0, 1)
    instruction: Callable[[dict], str]
    harness: Callable[[dict], str]  # lm-evaluation-harness context for --scoring loglik
    options: tuple[str, ...]  # lm-evaluation-harness option texts, by class index


def _sst2_instruction(row: dict) -> str:
    return f"Please choose the sentiment of this movie review: {row['sentence'].strip()}\n\nAnswer format: negative/positive"


def _rte_instruction(row: dict) -> str:
    return (f"Please answer true or false: does the premise entail the hypothesis?\n\nPremise: {row['sentence1'].strip()}\n"
            f"Hypothesis: {row['sentence2'].strip()}\n\nAnswer format: true/false")


GLUE: dict[str, GlueTask] = {
    "sst2": GlueTask(
        "SST-2", "sst2", ("sentence", "label"), ("negative", "positive"), _sst2_instruction,
        lambda row: f"{row['sentence'].strip()}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        (" negative", " positive"),
    ),
    # RTE's label 0 is entailment (GLUE's order): "true", the hypothesis follows
    "rte": GlueTask(
        "RTE", "rte", ("sentence1", "sentence2", "label"), ("true", "false"), _rte_instruction,
        lambda row: f"{row['sentence1'].strip()}\nQuestion: {row['sentence2'].strip()} True or False?\nAnswer:",
        (" True", " False"),
    ),
}
RTE_NAMES = {"entailment": 0, "not_entailment": 1}


def label_index(task: str, raw: object) -> int | None:
    """GLUE's class index of a raw label (``0``/``1``, or RTE's names), None if it is none of them."""
    text = str(raw).strip()
    if task == "rte" and text in RTE_NAMES:
        return RTE_NAMES[text]
    return int(text) if text in ("0", "1") else None


def to_record(task: str, row: dict) -> dict | str:
    """The LLM-Adapters record of one GLUE row (``instruction``, ``input``, ``output``, ``answer``), or why not."""
    spec = GLUE[task]
    missing = [c for c in spec.columns if not isinstance(row.get(c), (str, int)) or str(row.get(c)).strip() == ""]
    if missing:
        return f"no {missing[0]!r} value"
    index = label_index(task, row["label"])
    if index is None:
        allowed = "0/1" + ("/entailment/not_entailment" if task == "rte" else "")
        return f"label {row['label']!r} is not one of {allowed}"
    label = spec.labels[index]
    return {"instruction": spec.instruction(row), "input": "", "output": f"the correct answer is {label}", "answer": label}


def to_glue_question(task: str, row: dict) -> Question | str:
    """A Question whose ``label``/``generate`` prompt is the training record's, and whose ``loglik`` context is
    lm-evaluation-harness's for the task."""
    record = to_record(task, row)
    if isinstance(record, str):
        return record
    question = to_question(record)
    if isinstance(question, Question):
        spec = GLUE[task]
        question.context = spec.harness(row)
        question.options = [spec.options[spec.labels.index(label)] for label in question.labels]
    return question


def read_tsv(path: Path) -> tuple[list[str], list[dict | str]]:
    """(header, rows) of a GLUE TSV, quoting off; a row with the wrong number of fields becomes a reason string."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--data {path}: not readable ({type(err).__name__})") from None
    if not lines:
        raise UserError(f"--data {path}: empty file")
    header = lines[0].split("\t")
    rows: list[dict | str] = []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != len(header):
            rows.append(f"{path.name} line {number}: {len(fields)} tab-separated fields, the header has {len(header)}")
        else:
            rows.append(dict(zip(header, fields)))
    return header, rows


def data_file(task: str, data: Path) -> Path:
    """``data`` itself if it is a file; else ``<data>/<Folder>/dev.tsv`` or ``<data>/glue/<Folder>/dev.tsv``."""
    if data.is_file():
        return data
    folder = GLUE[task].folder
    for candidate in (data / folder / "dev.tsv", data / "glue" / folder / "dev.tsv"):
        if candidate.is_file():
            return candidate
    raise UserError(f"--data {data}: no GLUE file for task '{task}' (looked for {folder}/dev.tsv and glue/{folder}/dev.tsv)")


def _hub_rows(task: str) -> list[dict]:
    config = GLUE[task].hub_config
    return hub_rows("nyu-mll/glue", config, "validation", f"task '{task}': could not read nyu-mll/glue ({config}) from the hub "
                    "({error}); pass --data with a GLUE .tsv file or folder")


def load(task: str, data: Path | None) -> Loaded:
    """Questions of GLUE ``task`` from a TSV file, a GLUE folder, or (without ``data``) the hub."""
    if data is None:
        return collect(_hub_rows(task), lambda row: to_glue_question(task, row), "nyu-mll/glue")
    path = data_file(task, data)
    if path.suffix != ".tsv":
        raise UserError(f"--data {path}: task '{task}' reads GLUE .tsv files (or --task choice for .json/.jsonl)")
    header, rows = read_tsv(path)
    missing = [c for c in GLUE[task].columns if c not in header]
    if missing:
        raise UserError(f"--data {path}: no '{missing[0]}' column (the header has {', '.join(header)}); "
                        f"task '{task}' needs {', '.join(GLUE[task].columns)}")
    return collect(rows, lambda row: to_glue_question(task, row), str(path), [f"{path.name} line {n}" for n in range(2, len(rows) + 2)])
