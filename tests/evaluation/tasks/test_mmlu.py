"""MMLU: the 57-subject category map, the local CSV layout, k-shot prompts."""

from __future__ import annotations

from pathlib import Path

from xgblora_cli.evaluation.tasks import mmlu

HEADER = "question,choice0,choice1,choice2,choice3,answer\n"


def test_category_map_covers_57_subjects_in_four_categories() -> None:
    assert len(mmlu.SUBCATEGORY) == 57
    cats = {mmlu.category(s) for s in mmlu.SUBCATEGORY}
    assert cats == {"STEM", "humanities", "social sciences", "other"}
    assert mmlu.category("college_physics") == "STEM" and mmlu.category("professional_law") == "humanities"
    assert mmlu.category("sociology") == "social sciences" and mmlu.category("virology") == "other"


def test_local_csvs_zero_and_k_shot(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "test" / "astronomy_test.csv").write_text(HEADER + "What orbits Earth?,Moon,Sun,Mars,Venus,0\nbad row,,,,,x\n")
    (tmp_path / "dev" / "astronomy_dev.csv").write_text(HEADER + "Hot star?,Sun,Moon,Rock,Ice,0\n")
    zero = mmlu.load(tmp_path, shots=0)
    assert len(zero.questions) == 1 and zero.skipped == 1
    q = zero.questions[0]
    assert q.context.endswith("A. Moon\nB. Sun\nC. Mars\nD. Venus\nAnswer:") and q.options == [" A", " B", " C", " D"]
    assert q.answer == 0 and q.group == "astronomy"
    one = mmlu.load(tmp_path, shots=1).questions[0]
    assert one.context.startswith("The following is a multiple choice question about astronomy.\n\nHot star?")
    assert "Answer: A\n\n" in one.context and one.shots[0][1] == "A"
