"""Walk through the local persistence layer: save, list, reload, inspect, prune.

``fedstore demo weights`` needs no network. It generates conv/fc-style weights
for five rounds, saves each through :class:`~fedstore.store.LocalStore`, and
checks every step, printing ✓ or ✗. Exit status 1 if any check fails.

It cleans its own directory first: only a directory it created (it carries a
marker file) or an empty one is ever wiped.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from fedstore.errors import ConfigError

if TYPE_CHECKING:  # numpy loads when the demo runs, not for `fedstore --help`
    import numpy as np

__all__ = ["DEFAULT_DIR", "MARKER", "add_arguments", "run"]

DEFAULT_DIR = Path("checkpoints_demo_weights")
#: Marker proving a directory belongs to this demo (and may be wiped).
MARKER = ".fedstore-demo-weights"
ROUNDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"demo data directory, wiped at start (default: ./{DEFAULT_DIR})",
    )
    parser.add_argument(
        "--cid-version", type=int, choices=[0, 1], default=0, help="CID version (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")


def model_weights(round: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A small CNN's weights after ``round`` rounds: fixed init plus per-round updates."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = {
        "conv1.weight": (16, 1, 3, 3),
        "conv1.bias": (16,),
        "conv2.weight": (32, 16, 3, 3),
        "conv2.bias": (32,),
        "fc1.weight": (128, 32 * 5 * 5),
        "fc1.bias": (128,),
        "fc2.weight": (10, 128),
        "fc2.bias": (10,),
    }
    weights = {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in shapes.items()}
    for r in range(1, round + 1):
        step = np.random.default_rng([seed, r])
        for k, s in shapes.items():
            weights[k] += (step.normal(size=s) * 0.01).astype(np.float32)
    return weights


def prepare_dir(directory: Path) -> None:
    """Wipe ``directory`` if this demo owns it (or it is empty), then recreate it."""
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"{directory} exists and is not a directory; choose another --dir")
        owned = (directory / MARKER).is_file()
        if not owned and any(directory.iterdir()):
            raise ConfigError(
                f"refusing to wipe {directory}: it is not empty and was not created by "
                f"'fedstore demo weights' (no {MARKER} file); choose another --dir"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("created by 'fedstore demo weights'; safe to delete\n")


class _Checker:
    def __init__(self) -> None:

        from fedstore.console import table_console

        self.console = table_console()
        self.failures = 0

    def step(self, title: str) -> None:
        self.console.print(f"\n[bold]{title}[/bold]")

    def check(self, ok: bool, what: str) -> bool:
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.console.print(f"  {mark} {what}")
        self.failures += not ok
        return ok

    def info(self, text: str) -> None:
        self.console.print(f"    {text}")


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    import numpy as np

    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a
    )


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedstore import format as fmt
    from fedstore.ipld.cid import cid_of_bytes
    from fedstore.store import LocalStore

    directory: Path = args.dir
    seed: int = args.seed
    out = _Checker()
    c = out.console
    c.print(f"[bold]fedstore demo weights[/bold]: local checkpoints in {directory}")

    out.step(f"1. Clean the demo directory {directory}")
    prepare_dir(directory)
    out.check(not (directory / "catalog.sqlite").exists(), "directory is empty (marker only)")

    with LocalStore(directory, peer_id="demo-node", cid_version=args.cid_version) as store:
        out.step(f"2. Generate conv/fc weights for {ROUNDS} rounds and save each")
        records = {}
        for r in range(1, ROUNDS + 1):
            w = model_weights(r, seed)
            rec = store.save(r, w, {"round": str(r), "model": "demo-cnn"})
            records[r] = rec
            file_ok = (store.dir / rec.path).stat().st_size == rec.stored_size
            params = sum(a.size for a in w.values())
            out.check(
                file_ok,
                f"round {r}: {rec.cid}  {params:,} params, "
                f"{rec.raw_size:,} B raw -> {rec.stored_size:,} B stored",
            )
        cids = {rec.cid for rec in records.values()}
        out.check(len(cids) == ROUNDS, "every round has its own CID")

        out.step("3. List rounds (from the catalog, not the directory)")
        rows = store.list_checkpoints()
        table = Table()
        for col in ("round", "CID", "stored bytes", "status"):
            table.add_column(col, no_wrap=True)
        for row in rows:
            table.add_row(str(row.round), row.cid, f"{row.stored_size:,}", row.status)
        c.print(table)
        latest = store.latest()
        out.check(
            store.list_rounds() == list(range(1, ROUNDS + 1)),
            f"rounds {store.list_rounds()}",
        )
        out.check(
            latest is not None and latest.round == ROUNDS and latest.cid == records[ROUNDS].cid,
            f"latest round {latest.round if latest else None}, CID "
            f"{latest.cid if latest else None}",
        )

        out.step("4. Reload rounds 1, 3 and 5 and compare with the generated weights")
        for r in (1, 3, 5):
            ckpt = store.load(r)
            out.check(
                _same(ckpt.arrays, model_weights(r, seed)) and ckpt.metadata["round"] == str(r),
                f"round {r}: {len(ckpt.arrays)} tensors identical (CID verified on load)",
            )

        out.step("5. Load the latest checkpoint without giving a round")
        ckpt = store.load()
        out.check(
            _same(ckpt.arrays, model_weights(ROUNDS, seed))
            and ckpt.metadata.get("round") == str(ROUNDS),
            f"latest is round {ckpt.metadata.get('round')}, identical to round {ROUNDS}",
        )

        out.step("6. Inspect the raw file on disk")
        path = store.dir / records[ROUNDS].path
        data = path.read_bytes()
        info = fmt.inspect(data)
        out.info(f"file     {path}")
        out.info(
            f"header   magic {data[:4]!r}, format v{info.format_version}, codec {info.codec}"
            + (", byte-shuffled" if info.shuffled else "")
        )
        out.info(
            f"sizes    {info.stored_size:,} B on disk, {info.raw_size:,} B decompressed, "
            f"{info.tensor_bytes:,} B of tensors (ratio {info.ratio:.3f})"
        )
        out.info(f"tensors  {len(info.tensors)}, {info.parameter_count:,} parameters")
        for t in info.tensors:
            out.info(f"         {t.name:14} {t.dtype:8} {list(t.shape)}")
        expected_params = sum(a.size for a in model_weights(ROUNDS, seed).values())
        out.check(info.stored_size == len(data), "header stored size matches the file size")
        out.check(
            info.parameter_count == expected_params,
            f"parameter count {info.parameter_count:,} as generated",
        )
        out.check(
            cid_of_bytes(data, cid_version=args.cid_version) == records[ROUNDS].cid,
            "file bytes hash to the CID recorded in the catalog",
        )

        out.step("7. Prune to the last 2 rounds")
        deleted = store.prune(keep_last=2)
        out.check(
            [d.round for d in deleted] == [1, 2, 3], f"deleted rounds {[d.round for d in deleted]}"
        )
        remaining = store.list_rounds()
        for row in store.list_checkpoints():
            out.info(f"kept round {row.round}: {row.cid}")
        files = sorted(p.name for p in (store.dir / "rounds").iterdir())
        out.check(remaining == [4, 5], f"remaining rounds {remaining}")
        out.check(
            files == sorted(Path(records[r].path).name for r in (4, 5)),
            f"files on disk: {len(files)} ({', '.join(f[:20] + '…' for f in files)})",
        )
        latest = store.latest()
        out.check(latest is not None and latest.round == ROUNDS, "latest is still round 5")

    c.print()
    if out.failures:
        c.print(f"[red]✗ {out.failures} check(s) failed[/red]")
        return 1
    c.print(f"[green]✓ all checks passed[/green]  (data left in {directory})")
    return 0
