"""The method: the rank-r adapter, the boosting engine (blocks, attach, detach), boosters started from the gradient,
the chunked loss, exact merges from the record, the run directory, the training loop, and opening a target as a
model."""
