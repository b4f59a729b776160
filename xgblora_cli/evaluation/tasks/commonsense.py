"""The eight commonsense tasks in the LLM-Adapters JSON format.

Each record is ``{"instruction", "input", "output", "answer"}``; the instruction ends with a line
``Answer format: answer1/answer2/...`` (or ``true/false``, ``solution1/solution2``, ``option1/option2``,
``ending1/.../ending4``) that gives the candidate labels, and ``output`` says ``the correct answer is <label>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.jsonfile import read_records, record_names
from xgblora_cli.evaluation.tasks import Loaded, Question, collect

# task name -> folder name in the LLM-Adapters layout (a data folder's commonsense/<folder>/test.json)
FOLDERS = {
    "boolq": "boolq", "piqa": "piqa", "siqa": "social_i_qa", "hellaswag": "hellaswag", "winogrande": "winogrande",
    "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "openbookqa": "openbookqa",
}
FORMAT = re.compile(r"Answer format:\s*([A-Za-z0-9_/ ]+?)\s*$")


def labels_of(instruction: str) -> list[str]:
    """Candidate labels from the instruction's last ``Answer format: a/b/c`` line ([] if there is none)."""
    match = FORMAT.search(instruction.strip())
    return [part.strip() for part in match.group(1).split("/")] if match else []


def option_texts(instruction: str, labels: list[str]) -> list[str]:
    """The text after each ``Label:`` marker in the instruction (up to the next marker or line end);
    the label itself where there is no marker (BoolQ's true/false)."""
    markers = "|".join(re.escape(label) for label in labels)
    texts = []
    for label in labels:
        found = re.search(re.escape(label) + r":\s*(.*?)(?=\s+(?:" + markers + r"):|\n|$)", instruction, re.IGNORECASE | re.DOTALL)
        texts.append(found.group(1).strip() if found and found.group(1).strip() else label)
    return texts


def stem_of(instruction: str) -> str:
    """The question itself: the first paragraph without its ``Please ...:`` lead-in."""
    first = instruction.strip().split("\n\n", 1)[0]
    return re.sub(r"^Please [^:]*:\s*", "", first).strip()


def to_question(record: dict) -> Question | str:
    """A Question, or the reason this record cannot be scored."""
    instruction, answer = record.get("instruction"), str(record.get("answer", "")).strip()
    if not isinstance(instruction, str):
        return "no instruction"
    labels = labels_of(instruction)
    if len(labels) < 2:
        return "no 'Answer format: a/b/...' line with two or more labels"
    if answer not in labels:
        return f"answer {answer!r} is not one of {'/'.join(labels)}"
    output = str(record.get("output", ""))
    template = output.replace(answer, "{label}") if answer and answer in output else "the correct answer is {label}"
    prompt = instruction + (f"\n\n{record['input']}" if record.get("input") else "")
    candidates = [template.format(label=label) for label in labels]
    context = f"Question: {stem_of(instruction)}\nAnswer:"
    options = [" " + text for text in option_texts(instruction, labels)]
    return Question(context, options, prompt, candidates, labels, labels.index(answer))


def data_file(task: str, data: Path) -> Path:
    """``data`` itself if it is a file; else ``<data>/<Folder>/test.json`` or ``<data>/commonsense/<Folder>/test.json``."""
    if data.is_file():
        return data
    for candidate in (data / FOLDERS[task] / "test.json", data / "commonsense" / FOLDERS[task] / "test.json"):
        if candidate.is_file():
            return candidate
    raise UserError(f"--data {data}: no test file for task '{task}' (looked for {FOLDERS[task]}/test.json)")


def load(task: str, data: Path | None) -> Loaded:
    """Questions of ``task`` from ``data`` (a file or a folder in the LLM-Adapters layout) or, without it, the hub."""
    from xgblora_cli.evaluation.tasks import hub

    if data is None:
        return collect(hub.load_records(task), to_question, hub.SOURCES[task][0])
    path = data_file(task, data)
    records = read_records(path, f"--data {path}")
    return collect(records, to_question, str(path), record_names(path, len(records)))
