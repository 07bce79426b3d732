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
from tdsdist.options import fingerprint_fields

#: The keys a store recorded by `generate` leaves open, filled in once by the `score` that
#: completes it with a base model.
BASE_KEYS = ("base", "base_revision", "base_template")


def options_fingerprint(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The fingerprinted options of the configuration class `cls` (`opt(fingerprint=...)` on
    its fields), their values from `values` (else the field's default): a template by its
    fingerprint, an `unless-default` option only when it is not its default."""
    out: dict[str, Any] = {}
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, how in fingerprint_fields(cls).items():
        value = values.get(name, defaults[name])
        if how == "template":
            out[name] = None if value is None else template_fingerprint(value)
        elif how == "as-is" or value != defaults[name]:
            out[name] = value
    return out


def score_fingerprint(
    options: dict[str, Any],
    *,
    fields: Fields,
    data_sha256: str,
    tokenizer: Any,
    skipped_empty_answers: list[str] | None = None,
    head_dtype: str | None = None,
) -> dict[str, Any]:
    """The fingerprint of a scoring store: `options_fingerprint(ScoreConfig, ...)` (the base
    keys None while only the aligned side is recorded) and what the inputs make of them.
    `head_dtype`: given only where it changes the numbers (a float32 projection of a
    half-precision model); absent means the projection in the model's dtype, as in 0.1.0."""
    fingerprint = {
        **options,
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
    fingerprint = options_fingerprint(type(config), dataclasses.asdict(config))
    fingerprint.update(
        data_sha256=data_sha256(config.data),
        tokenizer_sha256=tokenizer_hash(tokenizer),
        tdsdist_version=__version__,
    )
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
