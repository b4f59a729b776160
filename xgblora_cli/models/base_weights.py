"""Read-only, memory-mapped access to a base checkpoint's safetensors tensors by parameter name.

The base model's files are never written: merges (:mod:`xgblora_cli.core.merge`) and sharded loading
(:mod:`xgblora_cli.models.sharding`) read W0 from here, a whole tensor or a range of its rows at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class BaseWeights:
    """Read-only, memory-mapped access to the base checkpoint's tensors by parameter name."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(model_dir.glob("*.safetensors"))
            weight_map = {}
            for file in files:
                with safe_open(file, framework="pt") as handle:
                    weight_map.update({key: file.name for key in handle.keys()})
        self._dir = model_dir
        self._map = weight_map
        self._handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._map

    def _handle(self, name: str):  # -> safetensors' safe_open handle of the file holding ``name``
        from safetensors import safe_open

        if name not in self._map:
            raise KeyError(f"{name} is not in the base checkpoint {self._dir}")
        file = self._map[name]
        if file not in self._handles:
            self._handles[file] = safe_open(self._dir / file, framework="pt")
        return self._handles[file]

    def get(self, name: str) -> torch.Tensor:
        """The base tensor ``name`` exactly as stored on disk."""
        return self._handle(name).get_tensor(name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the 2-D base tensor ``name``, read from the file without reading the rest."""
        return self._handle(name).get_slice(name)[start:stop]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())
