"""The table of recipe keys in docs/training.md, generated from the docstring under each field of the recipe dataclasses.

    .venv/bin/python scripts/recipe_keys.py           # print the table
    .venv/bin/python scripts/recipe_keys.py --write   # replace it between the recipe-keys markers of docs/training.md
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from xgblora_cli.recipe import EvalArgs, Recipe, TrainArgs, field_docs

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- recipe-keys:start -->\n", "<!-- recipe-keys:end -->"


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        if field.default is None or field.default == "":
            return ""
        value = str(field.default).lower() if isinstance(field.default, bool) else field.default
        return f" [`{value}`]"
    if field.default_factory is not dataclasses.MISSING and field.type not in ("TrainArgs", "EvalArgs"):  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
        return f" [`{', '.join(value)}`]" if value else ""
    return ""


def table() -> str:
    lines = ["| key [default] | meaning |", "|---|---|"]
    for cls, prefix in ((Recipe, ""), (TrainArgs, "train."), (EvalArgs, "eval.")):
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            if field.name in ("train", "eval"):
                continue
            doc = docs[field.name].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{prefix}{field.name}`{default_text(field)} | {doc} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="write the table into docs/training.md")
    text = table()
    if not p.parse_args().write:
        print(text, end="")
        return
    readme = ROOT / "docs" / "training.md"
    before, rest = readme.read_text().split(START, 1)
    readme.write_text(before + START + text + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
