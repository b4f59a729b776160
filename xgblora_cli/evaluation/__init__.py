"""Scoring a model (a base, a run at its end or at a step, a merged folder) on MMLU, the commonsense sets, GLUE, a
user's labelled file, or perplexity, in the target's own prompt format."""
