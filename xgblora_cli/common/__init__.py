"""What every layer uses and nothing of the method: one user-error type, atomic writes, the JSON reader and row names,
devices and data-parallel ranks, progress bars, consoles, the --force rule."""
