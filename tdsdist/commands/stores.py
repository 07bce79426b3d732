"""The commands about a store itself: `status` (units done and pending, per task) and `verify`
(checksums; `--repair` marks damaged units pending)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tdsdist.commands.common import user_errors


@click.command("status")
@click.argument("store_dir", type=click.Path())
@click.option(
    "--task-count", type=int, default=None, help="Show the share of each of N array tasks."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def status_command(store_dir: str, task_count: int | None, as_json: bool) -> None:
    """Units done and pending (per array task with --task-count)."""
    import numpy as np

    from tdsdist.store import Store

    store = Store(store_dir, mode="r")
    done = store.committed()
    report: dict[str, Any] = {
        "units": len(done),
        "done": int(done.sum()),
        "pending": int((~done).sum()),
    }
    if task_count:
        from tdsdist.store.units import in_task_share

        report["tasks"] = []
        for t in range(task_count):
            share = np.array([in_task_share(u, t, task_count) for u in range(len(done))], bool)
            report["tasks"].append(
                {"task": t, "done": int(done[share].sum()), "pending": int((~done[share]).sum())}
            )
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{store.path}: {report['done']} of {report['units']} units done, {report['pending']} pending"
    )
    for t in report.get("tasks", []):
        click.echo(f"  task {t['task']}: {t['done']} done, {t['pending']} pending")


@click.command("verify")
@click.argument("store_dir", type=click.Path())
@click.option(
    "--repair", is_flag=True, help="Mark damaged units pending: the same `score` re-scores them."
)
@user_errors
def verify_command(store_dir: str, repair: bool) -> None:
    """Read every committed unit and list the damaged ones (chunks failing their checksum)."""
    from tdsdist.analysis.chunks import BlockReader
    from tdsdist.store import Store
    from tdsdist.store.checks import damaged_tables, layout_problems
    from tdsdist.store.integrity import damaged_contexts, damaged_units, unchecked_note

    store = Store(store_dir, mode="r+" if repair else "r")
    note = unchecked_note(store)
    if note:
        click.echo(note)
    # Every store, checksums or not: the example layout, the tables, each committed chunk's file.
    tables = layout_problems(store) + [f"{n}: damaged" for n in damaged_tables(store)]
    for line in tables:
        click.echo(f"{line} (written once with the store: restore it from a copy)")
    if tables:
        click.echo(f"{store.path}: {len(tables)} damaged table(s); units not read")
        sys.exit(1)
    damaged = damaged_units(store, BlockReader(store))  # decoded by tdsdist, arrays in threads
    contexts = damaged_contexts(store)
    done = int(store.committed().sum())
    for unit, names in sorted(damaged.items()):
        click.echo(f"unit {unit}: damaged {', '.join(names)}")
    for name in contexts:
        click.echo(
            f"{name}: damaged (written once with the store: restore it from a copy; the scores do not depend on it)"
        )
    if repair:
        for unit in damaged:
            store.mark_pending(unit)
    if contexts and not damaged:
        sys.exit(1)
    if not damaged:
        click.echo(f"{store.path}: {done} committed units read, none damaged")
        return
    what = "marked pending: re-run the same `score` command" if repair else "use --repair"
    click.echo(f"{store.path}: {len(damaged)} of {done} committed units damaged ({what})")
    if not repair:
        sys.exit(1)
