"""Compiled adapters: an adapter merged into its base in float32 and converted to CTranslate2, for the ct2 runtime.

A compiled adapter is a cache, always rebuildable. It lives in the registry beside the adapter's version::

    <registry>/<name>/.compiled/v<N>/<key>/   model.bin, config.json, tokenizer.json, lora_whisper_compiled.json

(a dot-folder of the family: the registry's scan skips it, and its ``model.bin`` is not mistaken for a pickle in the
version folder). ``key`` = version + a hash of the adapter's files + the base fingerprint + the quantization, so a
re-filed adapter (same version number, other weights), another base or another weight type gets its own build.
A build is written to a temporary folder and renamed into place: two processes compiling the same adapter leave one
good copy (the second rename fails, and that process uses the winner's). No pickle anywhere: CTranslate2's
``model.bin`` is its own binary format, and the adapter is read from safetensors.

Compiling imports torch, transformers and peft (once per adapter version); using a compiled adapter does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterRecord, RegistryError

logger = logging.getLogger("lora_whisper")

COMPILED_DIR = ".compiled"
META_FILE = "lora_whisper_compiled.json"
_BUILD_LOCK = threading.Lock()
"""One build at a time in a process (transformers' model loading is not thread-safe); across processes the rename
decides."""
QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "float32")
"""CTranslate2 weight types a compiled adapter may be stored in (``int8`` by default)."""


@dataclass
class Compiled:
    """One compiled adapter: where it is and how it was made."""

    ref: str
    key: str
    path: Path
    quantization: str
    seconds: float | None = None
    """Compile time (merge + convert), as recorded when it was built."""
    built: bool = False
    """True when this call built it, False when it was found in the cache."""

    def to_dict(self) -> dict:
        return {
            "ref": self.ref,
            "key": self.key,
            "path": str(self.path),
            "quantization": self.quantization,
            "seconds": self.seconds,
            "built": self.built,
        }


_HASHES: dict[tuple, str] = {}
"""adapter_hash per (files, sizes, mtimes): a switch between resident adapters does not read the weights again."""


def adapter_hash(record: AdapterRecord) -> str:
    """A hash of the adapter's config and weights: changes when a version number is re-filed with other weights."""
    paths = [Path(record.path) / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)]
    stats = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in paths)
    if stats in _HASHES:
        return _HASHES[stats]
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    _HASHES[stats] = h.hexdigest()[:12]
    return _HASHES[stats]


def compile_key(record: AdapterRecord, fingerprint: str | None, quantization: str) -> str:
    fp = (fingerprint or "nofingerprint").removeprefix("sha256:")[:12]
    return f"v{record.version}-{adapter_hash(record)}-{fp}-{quantization}"


def compiled_root(record: AdapterRecord) -> Path:
    """``<registry>/<name>/.compiled/v<N>``."""
    vdir = Path(record.path)
    return vdir.parent / COMPILED_DIR / vdir.name


def _valid(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file() and (path / META_FILE).is_file()


def find_compiled(record: AdapterRecord, fingerprint: str | None, quantization: str) -> Compiled | None:
    """The compiled copy of ``record`` for this base and quantization, or None (never builds)."""
    key = compile_key(record, fingerprint, quantization)
    path = compiled_root(record) / key
    if not _valid(path):
        return None
    try:
        seconds = json.loads((path / META_FILE).read_text()).get("seconds")
    except (OSError, ValueError):
        seconds = None
    return Compiled(record.ref, key, path, quantization, seconds)


def list_compiled(record: AdapterRecord) -> list[Compiled]:
    """Every compiled copy of this version (any base, any quantization) whose key matches its current files."""
    root = compiled_root(record)
    if not root.is_dir():
        return []
    try:
        current = f"v{record.version}-{adapter_hash(record)}-"
    except OSError:
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.name.startswith(current) or not _valid(p):
            continue
        try:
            meta = json.loads((p / META_FILE).read_text())
        except (OSError, ValueError):
            continue
        out.append(Compiled(record.ref, p.name, p, meta.get("quantization", "?"), meta.get("seconds")))
    return out


def compile_adapter(
    record: AdapterRecord,
    base_path: str | Path,
    identity: dict,
    quantization: str = "int8",
    tokenizer_from: str | Path | None = None,
    force: bool = False,
) -> Compiled:
    """Return the compiled copy of ``record``, building it first when it is missing (or ``force``).

    Args:
        record: the adapter version (from the registry).
        base_path: the base as a transformers folder (float32 weights are loaded from it to merge into).
        identity: the base's ``{hub_id, fingerprint}`` (checked against the adapter's).
        quantization: CTranslate2 weight type of the compiled model.
        tokenizer_from: a CTranslate2 folder to take ``tokenizer.json`` from when the base has none.
    """
    if quantization not in QUANTIZATIONS:
        raise RegistryError(f"quantization {quantization!r} is not one of {list(QUANTIZATIONS)}")
    if record.path is None:
        raise RegistryError(f"adapter {record.ref}: not filed in a registry, nothing to compile beside")
    from .registry import check_adapter_files, check_base

    check_base(record, identity)
    check_adapter_files(record.path)
    fingerprint = identity.get("fingerprint")
    if not force and (hit := find_compiled(record, fingerprint, quantization)) is not None:
        return hit
    with _BUILD_LOCK:
        if not force and (hit := find_compiled(record, fingerprint, quantization)) is not None:
            return hit  # another thread built it while this one waited
        return _build(record, base_path, identity, fingerprint, quantization, tokenizer_from, force)


def _build(record, base_path, identity, fingerprint, quantization, tokenizer_from, force) -> Compiled:
    key = compile_key(record, fingerprint, quantization)
    root = compiled_root(record)
    dest = root / key
    root.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:10]
    tmp, merged = root / f".tmp-{tag}", root / f".tmp-{tag}-merged"
    t0 = time.perf_counter()
    try:
        from ..base.loading import load_base
        from .export import convert_ct2, merge_adapter

        logger.info("compiling %s for the ct2 runtime (%s; once per version)", record.ref, quantization)
        base = load_base(str(base_path), quantize="none", device="cpu")
        base.identity.fingerprint = fingerprint or base.identity.fingerprint
        base.identity.hub_id = identity.get("hub_id") or base.identity.hub_id
        merge_adapter(record, base, merged)
        del base
        convert_ct2(merged, tmp, quantization, tokenizer_from=Path(tokenizer_from) if tokenizer_from else None)
        seconds = round(time.perf_counter() - t0, 2)
        meta = {
            "adapter": record.ref,
            "adapter_hash": key.split("-")[1],
            "base": identity,
            "quantization": quantization,
            "seconds": seconds,
            "compiled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            import ctranslate2

            meta["ctranslate2"] = ctranslate2.__version__
        except ImportError:  # pragma: no cover - convert_ct2 needed it
            pass
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        if force and dest.exists():
            trash = root / f".trash-{tag}"
            os.rename(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, dest)
            built = True
        except OSError:
            if not _valid(dest):
                raise
            built = False  # another process renamed its copy first: use that one
        _prune(root, key)
        logger.info("compiled %s in %.1f s -> %s", record.ref, seconds, dest)
        return Compiled(record.ref, key, dest, quantization, seconds, built)
    finally:
        for p in (tmp, merged):
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, key: str) -> None:
    """Drop builds of the same version, base and quantization made from older files (a re-filed version)."""
    version, _hash, fp, quant = key.split("-", 3)
    for p in root.iterdir():
        parts = p.name.split("-", 3)
        if p.name != key and len(parts) == 4 and parts[0] == version and parts[2] == fp and parts[3] == quant:
            shutil.rmtree(p, ignore_errors=True)
