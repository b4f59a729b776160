"""Talking to a model: ``xgblora chat`` (a conversation, streamed) and ``xgblora generate`` (a file of prompts,
batched), for anything :func:`xgblora_cli.core.opening.open_target` opens, in the target's own prompt format."""
