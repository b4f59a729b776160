"""Training data: record formats (read, renamed, detected, checked), the prompt format (template, BOS, length), and
batches with response-only labels in a seeded, resumable order (padded or packed). Knows nothing of models."""
