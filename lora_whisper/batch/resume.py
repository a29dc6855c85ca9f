"""What a run leaves under ``--out`` and what a rerun reads back (steps 2, 3 and 6 of the flow): this run's part file
(``OUT/parts/``), the rows written so far (one per key: the latest result, else the latest error), the merged
``transcripts.jsonl``/``.parquet`` (``merge_output``, ``read_output``) and the routes cache ``OUT/routes.jsonl`` of
detection passes (``_route_signature``, ``_read_routes``, ``route_line``)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .options import EngineSpec, Item

logger = logging.getLogger("lora_whisper")

FORMATS = ("jsonl", "parquet")
MERGED_NAME = "transcripts"
PARTS_DIR = "parts"
ROUTES_NAME = "routes.jsonl"
"""Routes found by detection passes (key, route, signature of what they depend on), kept for resumed runs."""
NESTED_FIELDS = ("languages", "segments", "warnings")
"""Fields of a result row stored as JSON text in Parquet (their shape grows with the engine; JSON keeps it)."""


def row_key(row: dict) -> str:
    return str(row["id"]) if row.get("id") is not None else str(row["file"])


def read_rows(out: Path) -> list[dict]:
    """Every row written so far under ``out/parts`` (oldest part first); torn last lines of a killed run skipped."""
    rows = []
    for part in sorted((out / PARTS_DIR).glob("*.jsonl")):
        with part.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    logger.warning("%s:%d: not a complete JSON line (a run killed while writing?); ignored", part, n)
                    continue
                if isinstance(row, dict) and "file" in row:
                    rows.append(row)
    return rows


def latest_rows(rows: list[dict]) -> dict[str, dict]:
    """One row per key: the latest result, else the latest error (a later run retries errors)."""
    best: dict[str, dict] = {}
    for row in rows:
        k = row_key(row)
        if k not in best or "error" not in row or "error" in best[k]:
            best[k] = row
    return best


def merge_output(out: Path, items: list[Item], fmt: str) -> tuple[Path, int]:
    """Write the merged output (atomically): one row per key, inputs of this run first in input order, then rows of
    earlier runs' other inputs. Returns (path, error rows)."""
    best = latest_rows(read_rows(out))
    order = [it.key for it in items if it.key in best]
    order += [k for k in best if k not in set(order)]
    rows = [best[k] for k in order]
    dest = out / f"{MERGED_NAME}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = list(dict.fromkeys(k for r in rows for k in r))  # the union: pyarrow infers from the first row only
        flat = [
            {
                k: (json.dumps(r[k], ensure_ascii=False) if k in NESTED_FIELDS else r[k]) if k in r else None
                for k in keys
            }
            for r in rows
        ]
        pq.write_table(pa.Table.from_pylist(flat), tmp)
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, dest)
    for other in FORMATS:  # a merged file of the other format would be stale now
        stale = out / f"{MERGED_NAME}.{other}"
        if stale != dest and stale.exists():
            stale.unlink()
    return dest, sum("error" in r for r in rows)


def read_output(path: str | Path) -> list[dict]:
    """Rows of a merged output (JSON lines or Parquet, nested fields decoded back)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = []
        for r in pq.read_table(path).to_pylist():
            if r.get("error") is not None:  # an error row: {"file", "error"} (+ "id")
                r = {k: v for k, v in r.items() if k in ("file", "error") or (k == "id" and v is not None)}
            else:
                r = {k: v for k, v in r.items() if k != "error" and not (k == "id" and v is None)}
            rows.append({k: (json.loads(v) if k in NESTED_FIELDS and isinstance(v, str) else v) for k, v in r.items()})
        return rows
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _route_signature(topts, spec: EngineSpec) -> str:
    """What a detected route depends on: the base, the routing options and the registry's active adapters."""
    import hashlib

    from ..adapters.registry import Registry

    active = sorted(r.ref for r in Registry(spec.registry).active()) if spec.registry else []
    keys = ("adapter", "domain", "language", "languages", "threshold", "vad")
    what = {"base": spec.base, "active": active, **{k: getattr(topts, k, None) for k in keys}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_routes(path: Path, sig: str) -> dict[str, str]:
    """Routes detected by earlier runs with the same signature (a torn line is ignored)."""
    routes = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("sig") == sig and row.get("route") != "unreadable":
                routes[str(row["key"])] = str(row["route"])
    return routes


def route_line(key: str, route: str, sig: str) -> str:
    """One line of the routes cache (read back by ``_read_routes``)."""
    return json.dumps({"key": key, "route": route, "sig": sig}, ensure_ascii=False) + "\n"


def new_part(out: Path) -> Path:
    """This run's part file under ``out/parts`` (named by start time and process, so runs never share one)."""
    return out / PARTS_DIR / f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.jsonl"
