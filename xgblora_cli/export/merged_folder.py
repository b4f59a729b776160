"""``xgblora merge``: base model + booster record -> a Hugging Face folder (safetensors, config, tokenizer).

Each touched weight is summed in float64 from the base tensor and all its boosters' factors and rounded once to
the export dtype; untouched tensors are the base's, bit for bit. The folder is built beside ``--out`` and
renamed into place, so an interrupted merge never leaves a half-written model.
"""

from __future__ import annotations

import json
from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import check_writable, publish_dir
from xgblora_cli.common.outputs import check_replace, has_file
from xgblora_cli.core.opening import MERGE_SUMMARY, open_target
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.recipe import DTYPES


def check_out(out: Path, force: bool, base_dir: Path) -> None:
    """Refuse an ``--out`` inside the base model's folder, or one that exists and is not a merge (``--force``
    replaces only a folder ``xgblora merge`` wrote)."""
    if out.resolve() == base_dir.resolve() or base_dir.resolve() in out.resolve().parents:
        raise UserError(f"--out {out}: must not be inside the base model folder {base_dir} (base files are never written)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    check_replace(out, force, has_file(MERGE_SUMMARY), "--out", "xgblora merge")


def merge_run(run_dir: Path, out: Path, force: bool = False, dtype: str | None = None) -> dict:
    """Write the merged model of ``run_dir`` to ``out``; returns a summary (boosters, touched weights)."""
    run = RunDir(run_dir)
    base_dir = run.base_dir()
    check_out(out, force, base_dir)
    check_writable(out.parent, sum(p.stat().st_size for p in base_dir.glob("*.safetensors")), "--out")
    info = run.info()
    dtype = dtype or info.get("dtype", "float32")
    if dtype not in DTYPES:
        raise UserError(f"--dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    opened = open_target(run.path, dtype=dtype, device="cpu", quantization="none")  # exported unquantized
    model, tokenizer = opened.model, opened.tokenizer
    model.config.use_cache = True
    summary = {"run": str(run.path), "base": str(base_dir), "boosters": opened.boosters,
               "touched_weights": sorted(opened.stack.factors), "dtype": dtype,
               "prompt_format": opened.prompt.to_dict()}  # eval of the folder scores it as trained

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MERGE_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")

    publish_dir(out, write)
    return summary
