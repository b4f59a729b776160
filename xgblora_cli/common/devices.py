"""The device names a recipe or a command accepts (plain text; no torch here, so settings can check them)."""

from __future__ import annotations

import re

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
"""auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
