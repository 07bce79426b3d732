"""Where a model name points: a local folder, or a hub id; checked before anything is loaded.

Why: transformers treats any name that is not an existing folder as a hub id, so a mistyped
relative path (`--aligned nope/model`) on a machine without network costs a minute of retries and
a page of stderr, and a regular file or a folder without weights fails only after the store was
made. Here, in order:
- a path that exists must be a folder, and (for a model) hold weights;
- a name that looks local (starts with `.`, `/` or `~`, or has more than one `/`) never goes to
  the hub: it is a missing folder;
- any other name goes to the hub only when it is cached or the hub answers (a 3 s connect);
  with `HF_HUB_OFFLINE` set, or no answer, one line says so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from tdsdist.errors import TdsError

#: Suffixes of the weight files transformers loads (sharded ones come with an `.index.json`).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
#: How long to wait for the hub before saying it is unreachable.
HUB_TIMEOUT_S = 3.0


def looks_local(name: str) -> bool:
    """Whether `name` can only mean a path on this machine (hub ids are `owner/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def has_weights(folder: Path) -> bool:
    return any(
        p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"))
        for p in folder.iterdir()
    )


def check_model_source(name: str, what: str = "model", weights: bool = True) -> None:
    """Refuse, in one line, a model source that cannot load: a file, a folder without weights
    (when `weights`), a missing local path, or a hub id while the hub is unreachable."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TdsError(
                f"{name}: is a file, not a {what} folder; give the folder that holds config.json"
                " and the weights (or a hub id)"
            )
        if weights and (path / "config.json").is_file() and not has_weights(path):
            raise TdsError(
                f"{name}: the {what} folder holds no weights (*.safetensors or *.bin); copy them"
                " there, or give another folder"
            )
        return
    if looks_local(name):
        raise TdsError(f"{name}: no such {what} folder")
    if _cached(name):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise TdsError(
            f"{name}: no such {what} folder, and the hub is unreachable (HF_HUB_OFFLINE is set);"
            " give a local folder"
        )
    if not _hub_answers():
        raise TdsError(
            f"{name}: no such {what} folder, and the hub is unreachable (no answer within"
            f" {HUB_TIMEOUT_S:.0f} s); give a local folder, or check the network"
        )


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    for file in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(name, file), str):
                return True
        except Exception:  # an id the hub library rejects: not cached
            return False
    return False


def _hub_answers() -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), HUB_TIMEOUT_S):
            return True
    except OSError:
        return False
