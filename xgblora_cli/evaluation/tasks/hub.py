"""The commonsense tasks from their hub datasets, rewritten into the LLM-Adapters record format.

Each converter takes one row of the hub dataset's own schema and returns
``{"instruction", "input", "output", "answer"}`` as LLM-Adapters writes it, so every task is scored by the one
parser in :mod:`xgblora_cli.evaluation.tasks.commonsense`.
"""

from __future__ import annotations

from typing import Callable

from xgblora_cli.data.hubdata import hub_rows

Row = dict


def _choices(lead: str, stem: str, word: str, options: list[str], answer: int) -> dict:
    marked = " ".join(f"{word.capitalize()}{i + 1}: {text}" for i, text in enumerate(options))
    labels = "/".join(f"{word}{i + 1}" for i in range(len(options)))
    label = f"{word}{answer + 1}"
    return {"instruction": f"{lead}: {stem}\n\n{marked}\n\nAnswer format: {labels}", "input": "",
            "output": f"the correct answer is {label}", "answer": label}


def boolq(row: Row) -> dict:
    answer = "true" if row["answer"] else "false"
    return {"instruction": f"Please answer the following question with true or false, question: {row['question']}?"
                           "\n\nAnswer format: true/false", "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def piqa(row: Row) -> dict:
    return _choices("Please choose the correct solution to the question", row["goal"], "solution",
                    [row["sol1"], row["sol2"]], int(row["label"]))


def siqa(row: Row) -> dict:
    return _choices("Please choose the correct answer to the question", f"{row['context']} {row['question']}", "answer",
                    [row["answerA"], row["answerB"], row["answerC"]], int(row["label"]) - 1)


def hellaswag(row: Row) -> dict:
    stem = f"{row['activity_label']}: {row['ctx']}"
    return _choices("Please choose the correct ending to complete the given sentence", stem, "ending",
                    list(row["endings"]), int(row["label"]))


def winogrande(row: Row) -> dict:
    return _choices("Please choose the correct answer to fill in the blank to complete the given sentence",
                    row["sentence"], "option", [row["option1"], row["option2"]], int(row["answer"]) - 1)


def arc(row: Row, stem_key: str = "question") -> dict:
    labels = list(row["choices"]["label"])
    return _choices("Please choose the correct answer to the question", row[stem_key], "answer",
                    list(row["choices"]["text"]), labels.index(row["answerKey"]))


def openbookqa(row: Row) -> dict:
    return arc(row, stem_key="question_stem")


# task -> (hub name, config, split, converter)
SOURCES: dict[str, tuple[str, str | None, str, Callable[[Row], dict]]] = {
    "boolq": ("google/boolq", None, "validation", boolq),
    "piqa": ("ybisk/piqa", None, "validation", piqa),
    "siqa": ("allenai/social_i_qa", None, "validation", siqa),
    "hellaswag": ("Rowan/hellaswag", None, "validation", hellaswag),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", winogrande),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", arc),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", arc),
    "openbookqa": ("allenai/openbookqa", "main", "test", openbookqa),
}


def load_records(task: str) -> list[dict | str]:
    """The task's evaluation split from the hub, as LLM-Adapters records (or a reason string per bad row)."""
    name, config, split, convert = SOURCES[task]
    rows = hub_rows(name, config, split, f"task '{task}': could not read {name} from the hub ({{error}}); pass --data with local files")
    records: list[dict | str] = []
    for number, row in enumerate(rows):
        try:
            records.append(convert(row))
        except (KeyError, ValueError, TypeError, IndexError) as err:
            records.append(f"hub row {number}: unexpected fields ({err})")
    return records
