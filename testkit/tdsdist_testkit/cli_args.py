"""Command lines for tdsdist's jobs on the tiny model pairs, written once for every test.

The tests run `score`, `generate` and `nudge` on tiny random models hundreds of times with the
same few flags (the models, the demo data, a store, `--device cpu`, a small `--top-k`); spelling
each list out in every file repeated forty lines of arguments that differ by one number. A test
says here only what it varies, as keyword arguments named like the flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["cli_args"]


def cli_args(
    command: str | None,
    aligned: str | Path,
    base: str | Path | None = None,
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
    store: str | Path | None = None,
    device: str | None = "cpu",
    extra: Sequence[str] = (),
    **options: object,
) -> list[str]:
    """The arguments of `tdsdist COMMAND` (no command word when `command` is None, for a
    launcher that adds it) on the model folders `aligned` and `base`.

    `data` defaults to the demo data shipped with tdsdist; `out` and `store` are left out when
    None. Each other keyword is a flag, its underscores turned into dashes (`top_k=5` ->
    `--top-k 5`): `True` gives the bare flag, `None` or `False` leaves it out, any other value
    is passed as its `str`. `--device` comes after them, then `extra` as given, so that a flag
    in `extra` overrides an earlier one (click keeps the last value).
    """
    if data is None:
        from tdsdist.jobs.demo import demo_data_path

        data = demo_data_path()
    args = [] if command is None else [command]
    args += ["--aligned", str(aligned)]
    if base is not None:
        args += ["--base", str(base)]
    args += ["--data", str(data)]
    for flag, value in (("--out", out), ("--store", store)):
        if value is not None:
            args += [flag, str(value)]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    if device is not None:
        args += ["--device", device]
    return [*args, *extra]
