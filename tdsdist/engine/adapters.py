"""An aligned model given as a LoRA adapter on the base model: checked up front, loaded once.

A DPO or SFT run often ships only a LoRA adapter. Loading the base and the merged base+adapter as
two models would hold the base weights twice; instead peft injects the adapter into the one base
model, the aligned side runs it as it is, and the base side runs the same module inside peft's
`disable_adapter()` (each side a `ModelRunner` with its own prefix cache; `parallel/loading.py`).

Everything that can be told from the files is checked before any weights load and before a store
is created: a local folder (never a hub id, never remote code), a readable `adapter_config.json`
of a LoRA, safetensors weights (a `.bin` is a pickle: refused), the shapes of every adapter
tensor against the base model's modules (built on the meta device: no memory), an adapter that
would change the output projection (refused: the projection is taken from the base weights).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tdsdist.errors import TdsError, first_line
from tdsdist.files import file_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
#: peft's prefix of every saved key: `base_model.model.<module path>.lora_A.weight`.
SAVED_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$"
)


@dataclass(frozen=True)
class Adapter:
    """A checked adapter folder."""

    path: Path  # the folder, resolved
    config: dict[str, Any]  # adapter_config.json
    weights: Path  # adapter_model.safetensors

    def where(self) -> str:
        return f"--aligned-adapter {self.path}"


def read_adapter(name: str) -> Adapter:
    """The adapter folder `name`, or one `TdsError` line saying what is wrong with it."""
    path = Path(name).expanduser()
    if not path.exists():
        raise TdsError(
            f"--aligned-adapter {name}: no such folder (an adapter is read from a local folder,"
            " never from a hub)"
        )
    if not path.is_dir():
        raise TdsError(f"--aligned-adapter {name}: not a folder (give the adapter's folder)")
    path = path.resolve()
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise TdsError(f"--aligned-adapter {path}: no {CONFIG_FILE} (is it a peft adapter folder?)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TdsError(f"{config_file}: cannot read it ({first_line(e)})") from None
    if not isinstance(config, dict):
        raise TdsError(f"{config_file}: not a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise TdsError(
            f"{config_file}: peft_type {kind!r}: only LoRA adapters (LORA) are supported"
        )
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickled = (path / PICKLED_WEIGHTS_FILE).is_file()
        why = f" ({PICKLED_WEIGHTS_FILE} is a pickle and is never read)" if pickled else ""
        raise TdsError(f"--aligned-adapter {path}: no {WEIGHTS_FILE}{why}")
    return Adapter(path, config, weights)


def tokenizer_source(aligned: str | None, adapter: str, base: str) -> str:
    """Where the aligned tokenizer comes from: `--aligned` when given, else the adapter folder
    when it holds a tokenizer (a chat template, added by the fine-tuning run), else `--base`."""
    if aligned:
        return aligned
    return adapter if (Path(adapter).expanduser() / "tokenizer_config.json").is_file() else base


def adapter_fingerprint(adapter: Adapter) -> dict[str, str]:
    """The store's `aligned_adapter` key: the folder and one hash of its config and weights."""
    digest = hashlib.sha256()
    for file in (adapter.path / CONFIG_FILE, adapter.weights):
        digest.update(f"{file.name}:{file_sha256(file)}\n".encode())
    return {"path": str(adapter.path), "sha256": digest.hexdigest()}


def check_fits_base(
    adapter: Adapter, base: str, base_config: Any, trust_remote_code: bool
) -> list[str]:
    """Refuse an adapter that does not fit `base` (one line); returns notes for the log.

    The shapes decide: every adapter tensor must match a module of the base model (built on the
    meta device from `base_config`). The base named in `adapter_config.json` is compared where it
    can be told apart from `base`; a different name whose shapes fit is only noted.
    """
    check_output_projection(adapter, base_config)
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        # transformers leaves `from_config` unannotated
        skeleton = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            base_config, trust_remote_code=trust_remote_code
        )
    modules = dict(skeleton.named_modules())
    params = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    try:
        with safe_open(adapter.weights, "pt") as f:  # reads the header only
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise TdsError(f"{adapter.weights}: cannot read it ({first_line(e)})") from None
    for key, shape in shapes.items():
        problem = _misfit(key.removeprefix(SAVED_PREFIX), shape, modules, params)
        if problem:
            named = adapter.config.get("base_model_name_or_path")
            made_for = f" (adapter_config.json names {named!r})" if named else ""
            raise TdsError(f"{adapter.where()} does not fit --base {base}: {problem}{made_for}")
    named = adapter.config.get("base_model_name_or_path")
    if named and not _same_base(str(named), base):
        return [
            f"tdsdist: note: {adapter.where()} was made for {named!r} (adapter_config.json);"
            f" applied to --base {base} (its shapes fit)"
        ]
    return []


def check_output_projection(adapter: Adapter, base_config: Any) -> None:
    """The scoring head projects with the base model's output rows on both sides, so an adapter
    of `lm_head` (or of tied input embeddings) is refused rather than silently ignored."""
    touched = []
    for key in ("target_modules", "modules_to_save"):
        value = adapter.config.get(key) or []
        names = [value] if isinstance(value, str) else list(value)
        touched += [n for n in names if n.split(".")[-1] in ("lm_head", "embed_tokens", "wte")]
    if adapter.config.get("trainable_token_indices"):
        touched.append("trainable_token_indices")
    head = [n for n in touched if n == "lm_head"]
    tied = bool(getattr(base_config, "tie_word_embeddings", False)) and touched
    if head or tied:
        raise TdsError(
            f"{adapter.where()}: the adapter changes the output projection ({', '.join(touched)}),"
            " which tdsdist takes from the base weights: merge it (peft merge_and_unload) and pass"
            " the merged model as --aligned"
        )


def _misfit(
    name: str,
    shape: tuple[int, ...],
    modules: dict[str, Any],  # name -> nn.Module, read by duck typing
    params: dict[str, tuple[int, ...]],
) -> str | None:
    match = _LORA_KEY.match(name)
    if match is None:  # a full tensor (modules_to_save): it must be a parameter of that shape
        if name in params and params[name] != shape:
            return f"{name} is {list(shape)} in the adapter, {list(params[name])} in the base"
        return None
    module_name, part = match["module"], match["part"]
    module = modules.get(module_name)
    if module is None:
        return f"the base model has no module {module_name}"
    a = part.endswith("A")
    if isinstance(module, torch.nn.Embedding):  # A: [r, num_embeddings], B: [dim, r]
        axis, size = (1, module.num_embeddings) if a else (0, module.embedding_dim)
        what = "tokens" if a else "dimensions"
    elif hasattr(module, "in_features"):  # A: [r, in_features], B: [out_features, r]
        axis, size = (1, module.in_features) if a else (0, module.out_features)
        what = "inputs" if a else "outputs"
    elif hasattr(module, "nf"):  # GPT-2's Conv1D: weight [in, out]
        axis, size = (1, module.weight.shape[0]) if a else (0, module.weight.shape[1])
        what = "inputs" if a else "outputs"
    else:
        return None
    if len(shape) != 2 or shape[axis] != size:
        return f"{name} is {list(shape)}, but the base's {module_name} has {size} {what}"
    return None


def _same_base(named: str, base: str) -> bool:
    """Whether the adapter's recorded base is `base`: the same folder, or a hub id and a local
    copy with the same last name (`meta-llama/Llama-2-7b-hf` and `/models/Llama-2-7b-hf`)."""
    a, b = Path(named).expanduser(), Path(base).expanduser()
    if a.is_dir() and b.is_dir():
        return a.resolve() == b.resolve()
    return a.name.lower() == b.name.lower()


def apply_adapter(model: PreTrainedModel, adapter: Adapter) -> Any:
    """peft's `PeftModel` over `model`, the adapter injected in place (the same module objects:
    `model` itself now runs with the adapter on, unless inside `disable_adapter()`).

    What the up-front checks cannot foresee (peft's own shape or key errors) is one `TdsError`."""
    from peft import PeftModel

    try:
        with warnings.catch_warnings():  # peft calls transformers' deprecated names: noise here
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise TdsError(f"{adapter.where()}: peft cannot load it ({first_line(e)})") from None
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]  # unannotated upstream
    embeddings = model.get_input_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if _is_peft_layer(head) or (tied and _is_peft_layer(embeddings)):
        raise TdsError(
            f"{adapter.where()}: the adapter changes the output projection: merge it"
            " (peft merge_and_unload) and pass the merged model as --aligned"
        )
    return peft_model.eval()


def _is_peft_layer(module: Any) -> bool:
    return type(module).__module__.startswith("peft")
