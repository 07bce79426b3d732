"""What a store's numbers depend on, recorded in it, and compared when a run resumes.

A store is resumed only by a run that would compute the same numbers: same models and revisions,
templates (their files' contents too), k, dtype, answer cut, examples, units, fields, data and
tokenizer. Both jobs build the scoring fingerprint with `score_fingerprint`, so a store recorded by
`generate --store` and then completed by `score` agree key for key. The keys are those of
tdsdist 0.1.0 (stores of months of runs must keep resuming); a new key may only be added where
its absence means the old behaviour (as `skipped_empty_answers`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from tdsdist import __version__
from tdsdist.files import file_sha256
from tdsdist.inputs.data import Fields
from tdsdist.inputs.templates import template_fingerprint
from tdsdist.inputs.tokenizer import tokenizer_hash

#: The keys a store recorded by `generate` leaves open, filled in once by the `score` that
#: completes it with a base model.
BASE_KEYS = ("base", "base_revision", "base_template")


def score_fingerprint(
    *,
    aligned: str,
    aligned_revision: str | None,
    base: str | None,
    base_revision: str | None,
    aligned_template: str,
    base_template: str | None,
    top_k: int,
    dtype: str,
    max_output_tokens: int | None,
    limit: int | None,
    unit_size: int,
    truncate_context: bool,
    fields: Fields,
    data_sha256: str,
    tokenizer: Any,
    skipped_empty_answers: list[str] | None = None,
    head_dtype: str | None = None,
) -> dict[str, Any]:
    """The fingerprint of a scoring store (the base keys None while only the aligned side is
    recorded). `head_dtype`: given only where it changes the numbers (a float32 projection of a
    half-precision model); absent means the projection in the model's dtype, as in 0.1.0."""
    fingerprint = {
        "aligned": aligned,
        "aligned_revision": aligned_revision,
        "base": base,
        "base_revision": base_revision,
        "aligned_template": template_fingerprint(aligned_template),
        "base_template": None if base_template is None else template_fingerprint(base_template),
        "top_k": top_k,
        "dtype": dtype,
        "max_output_tokens": max_output_tokens,
        "limit": limit,
        "unit_size": unit_size,
        "truncate_context": truncate_context,
        "fields": dataclasses.asdict(fields),
        "data_sha256": data_sha256,
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "tdsdist_version": __version__,
    }
    if skipped_empty_answers:  # only when some were left out: stores made without stay resumable
        fingerprint["skipped_empty_answers"] = list(skipped_empty_answers)
    if head_dtype is not None:
        fingerprint["head_dtype"] = head_dtype
    return fingerprint


def fingerprinted_head_dtype(dtype: str, head_dtype: str) -> str | None:
    """The `head_dtype` key's value, or None where the head's precision changes nothing (float32
    and float64 weights project in their own dtype either way)."""
    return head_dtype if dtype in ("bfloat16", "float16") and head_dtype != "model" else None


def data_sha256(path: Path | str) -> str:
    """The data's hash: a file's SHA-256 (as in 0.1.0); for a `datasets` folder, the SHA-256
    of every file in it (its arrow data files, `state.json`, `dataset_info.json`), each with its
    relative path, in sorted order, so that a changed, added or renamed file changes it."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256(b"tdsdist datasets folder\n")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.relative_to(path).as_posix()
        digest.update(f"{name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def generation_fingerprint(config: Any, tokenizer: Any) -> dict[str, Any]:
    """What generated answers depend on (`GenerateConfig`): an unfinished `generate` resumes
    only with the same."""
    keys = ("aligned", "aligned_revision", "max_new_tokens", "temperature", "top_p", "seed", "stop", "top_k", "limit", "unit_size", "dtype")  # fmt: skip
    fingerprint = {k: getattr(config, k) for k in keys}
    fingerprint.update(
        aligned_template=template_fingerprint(config.aligned_template),
        data_sha256=data_sha256(config.data),
        tokenizer_sha256=tokenizer_hash(tokenizer),
        tdsdist_version=__version__,
    )
    if getattr(config, "format", "auto") != "auto":  # absent: detected, as before
        fingerprint["format"] = config.format
    return fingerprint


def differences(
    stored: dict[str, Any],
    now: dict[str, Any],
    open_keys: tuple[str, ...] = (),
    where: str = "in the store",
) -> list[str]:
    """One phrase per key that differs (`key: X in the store, Y now`), `open_keys` ignored. Keys
    on either side count: an option recorded in the store and not given now differs too."""
    keys = list(now) + [k for k in stored if k not in now]
    return [
        f"{key}: {stored.get(key)!r} {where}, {now.get(key)!r} now"
        for key in keys
        if stored.get(key) != now.get(key) and key not in open_keys
    ]


def aligned_name(fingerprint: dict[str, Any]) -> str | None:
    """The aligned model as a reader should see it: `--aligned`, or for a LoRA adapter scored on
    the base (`--aligned-adapter`, where `aligned` may be unset) `BASE + ADAPTER_FOLDER`."""
    adapter = fingerprint.get("aligned_adapter")
    if isinstance(adapter, dict) and adapter.get("path"):
        folder = str(adapter["path"]).rstrip("/").rsplit("/", 1)[-1]
        return f"{fingerprint.get('aligned') or fingerprint.get('base')} + {folder}"
    return fingerprint.get("aligned")
