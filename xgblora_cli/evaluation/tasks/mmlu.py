"""MMLU: 57 subjects, four categories (as in the MMLU paper's repository), 0-shot or k-shot from the dev split.

Local data is the release layout: ``<data>/test/<subject>_test.csv`` and ``<data>/dev/<subject>_dev.csv`` with
the header ``question,choice0,choice1,choice2,choice3,answer`` (answer 0-3). Without ``--data`` the hub dataset
``cais/mmlu`` is read through ``datasets``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.data.hubdata import hub_rows
from xgblora_cli.evaluation.tasks import Loaded, Question

LETTERS = ["A", "B", "C", "D"]
SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}
CATEGORIES = {
    "STEM": {"physics", "chemistry", "biology", "computer science", "math", "engineering"},
    "humanities": {"history", "philosophy", "law"},
    "social sciences": {"politics", "culture", "economics", "geography", "psychology"},
    "other": {"other", "business", "health"},
}


def category(subject: str) -> str:
    sub = SUBCATEGORY[subject]
    return next(name for name, members in CATEGORIES.items() if sub in members)


def render(subject: str, question: str, choices: list[str], chat: bool) -> str:
    """The question with lettered choices; for chat an instruction, else ending in ``Answer:`` (MMLU's format)."""
    lines = [f"The following is a multiple choice question about {subject.replace('_', ' ')}.", "", question]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices)]
    lines += ["", "Answer with the letter of the correct option only."] if chat else ["Answer:"]
    return "\n".join(lines)


Row = tuple[str, list[str], int]  # question, four choices, answer index


def _read_csv(path: Path) -> list[Row | str]:
    rows: list[Row | str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            try:
                choices = [row[f"choice{i}"] for i in range(4)]
                answer = int(row["answer"])
                if not 0 <= answer <= 3 or not row["question"]:
                    raise ValueError
                rows.append((row["question"], choices, answer))
            except (KeyError, ValueError, TypeError):
                rows.append(f"{path.name} row {number}: expected question, choice0-3 and an answer 0-3")
    return rows


def _local(data: Path, split: str) -> dict[str, list[Row | str]]:
    folder = next((f for f in (data / split, data / "mmlu" / split) if f.is_dir()), None)
    if folder is None:
        raise UserError(f"--data {data}: no MMLU '{split}' folder (expected {data}/{split}/<subject>_{split}.csv)")
    found = {}
    for path in sorted(folder.glob(f"*_{split}.csv")):
        subject = path.name[: -len(f"_{split}.csv")]
        if subject in SUBCATEGORY:
            found[subject] = _read_csv(path)
    if not found:
        raise UserError(f"--data {folder}: no <subject>_{split}.csv files of the 57 MMLU subjects")
    return found


def _hub(split: str) -> dict[str, list[Row | str]]:
    rows = hub_rows("cais/mmlu", "all", split, "task 'mmlu': could not read cais/mmlu from the hub ({error}); pass --data")
    found: dict[str, list[Row | str]] = {}
    for row in rows:
        found.setdefault(row["subject"], []).append((row["question"], list(row["choices"]), int(row["answer"])))
    return found


def load(data: Path | None, shots: int) -> Loaded:
    tests = _local(data, "test") if data else _hub("test")
    devs = (_local(data, "dev") if data else _hub("dev")) if shots else {}
    loaded = Loaded([])
    for subject, rows in tests.items():
        examples = [r for r in devs.get(subject, []) if not isinstance(r, str)][:shots]
        worked = [(render(subject, q, c, chat=True), LETTERS[a]) for q, c, a in examples]
        prefix = "".join(f"{render(subject, q, c, chat=False)} {LETTERS[a]}\n\n" for q, c, a in examples)
        for row in rows:
            if isinstance(row, str):
                loaded.skipped += 1
                if len(loaded.skip_reasons) < 5:
                    loaded.skip_reasons.append(row)
                continue
            q, choices, answer = row
            context = prefix + render(subject, q, choices, chat=False)
            loaded.questions.append(Question(
                context, [f" {x}" for x in LETTERS], render(subject, q, choices, chat=True), list(LETTERS), list(LETTERS),
                answer, subject, worked,
            ))
    return loaded
