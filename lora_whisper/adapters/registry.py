"""The adapter registry: folders on disk, nothing else to keep in sync. No torch import here.

Layout::

    adapters/
      <name>/                  one adapter family, e.g. fr-medical
        active                 the active version number (text); missing -> the newest valid version
        v1/                    peft's files + lora_whisper.json (+ recipe.yaml, metrics, plot)
        v2/
      .lock                    flock'ed while anything is written

Writes are atomic: a version is assembled in ``.tmp-*`` inside the registry, checked, then renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import struct
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .schema import MAX_METADATA_BYTES, NAME_RE, check_record

logger = logging.getLogger("lora_whisper")

METADATA_FILE = "lora_whisper.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ENV_VAR = "LORA_WHISPER_ADAPTERS"


class RegistryError(ValueError):
    """A registry operation failed; the message names the adapter, folder or field."""


class AdapterMismatchError(RegistryError):
    """An adapter was trained on another base than the one loaded."""


def default_root() -> Path:
    """``$LORA_WHISPER_ADAPTERS`` or ``./adapters``."""
    return Path(os.environ.get(ENV_VAR) or "adapters")


def check_name(name: str, what: str = "adapter name") -> str:
    """Reject names that could escape the registry folder or confuse the layout."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise RegistryError(
            f"{what} {name!r} is not allowed: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``fr-medical`` -> (fr-medical, None); ``fr-medical@2`` or ``fr-medical@v2`` -> (fr-medical, 2)."""
    name, _, version = ref.partition("@")
    check_name(name)
    if not version:
        return name, None
    v = version.removeprefix("v")
    if not v.isdigit():
        raise RegistryError(f"adapter reference {ref!r}: version must be a number, e.g. {name}@2")
    return name, int(v)


def check_safetensors(path: Path) -> None:
    """Check a safetensors file's header and size without loading tensors (no torch needed)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise RegistryError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise RegistryError(f"{path}: corrupt safetensors header (length {n})")
            if n > size - 8:
                raise RegistryError(f"{path}: truncated safetensors file (header of {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, RegistryError):
            raise
        raise RegistryError(f"{path}: unreadable safetensors file ({e})") from e
    if not isinstance(header, dict):
        raise RegistryError(f"{path}: malformed safetensors header (a JSON {type(header).__name__}, not an object)")
    end = 0
    for k, t in header.items():
        if k == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise RegistryError(f"{path}: malformed safetensors header (tensor {k!r} has no valid data_offsets)")
        end = max(end, offsets[1])
    if 8 + n + end != size:
        raise RegistryError(f"{path}: truncated safetensors file (header expects {8 + n + end} bytes, file has {size})")
    if not any(k != "__metadata__" for k in header):
        raise RegistryError(f"{path}: holds no tensors")


def check_adapter_files(folder: Path) -> dict:
    """Check a PEFT adapter folder: config present, weights as valid safetensors, no pickles. Returns the config."""
    folder = Path(folder)
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise RegistryError(f"{folder}: pickled files are not accepted ({', '.join(pickles)}); save with safetensors")
    cfg = folder / ADAPTER_CONFIG
    if not cfg.is_file():
        raise RegistryError(f"{folder}: no {ADAPTER_CONFIG}")
    try:
        if cfg.stat().st_size > MAX_METADATA_BYTES:
            raise ValueError(f"{cfg.stat().st_size} bytes, at most {MAX_METADATA_BYTES}")
        config = json.loads(cfg.read_text())
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise RegistryError(f"{cfg}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(config, dict):
        raise RegistryError(f"{cfg}: not a JSON object")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise RegistryError(f"{folder}: no {ADAPTER_WEIGHTS}")
    check_safetensors(weights)
    if config.get("peft_type", "LORA") != "LORA":
        raise RegistryError(f"{cfg}: peft_type {config.get('peft_type')!r} is not LORA")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if r is not None and not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 4096):
        raise RegistryError(f"{cfg}: r must be an integer from 1 to 4096 (peft sizes the layers by it), got {r!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
        raise RegistryError(f"{cfg}: lora_alpha must be a number > 0, got {alpha!r}")
    return config


COPY_IGNORED = (".*", METADATA_FILE, "checkpoint-*", "runs")
"""Names never copied from a source folder (at any depth): hidden files, its own metadata, training leftovers."""
MAX_FOLDER_ENTRIES = 1000
"""An adapter folder holds a handful of files; one with more entries than this is not one (``import /``)."""


def check_links(folder: Path) -> None:
    """Refuse a source folder holding anything but folders, regular files and links to regular files inside it.

    A link out of the folder (``notes.txt -> /etc/passwd``), a dangling or looping link, a link to a folder, a FIFO
    or a device: RegistryError naming it, before anything is read or copied.
    """
    _walk_files(Path(folder))


def _walk_files(root: Path) -> list[tuple[Path, Path]]:
    """(source file to read, path relative to ``root``) of every file to copy, links resolved; see check_links."""
    import fnmatch

    root_real = Path(os.path.realpath(root))
    out, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        seen += len(dirnames) + len(filenames)
        if seen > MAX_FOLDER_ENTRIES:  # `adapters import /` must not walk the whole disk
            raise RegistryError(f"{root}: more than {MAX_FOLDER_ENTRIES} files and folders: not an adapter folder")
        for name in sorted(dirnames + filenames):
            if any(fnmatch.fnmatch(name, pat) for pat in COPY_IGNORED):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            p = here / name
            st = os.lstat(p)
            rel = p.relative_to(root)
            if os.path.islink(p):
                target = Path(os.path.realpath(p))
                if root_real not in target.parents or not target.is_file():
                    raise RegistryError(
                        f"{root}: {rel} is a symbolic link to {os.readlink(p)} (outside the folder, a folder, or "
                        "broken): links are not imported; copy the file itself in (cp -L)"
                    )
                if name in dirnames:
                    dirnames.remove(name)
                out.append((target, rel))
            elif stat.S_ISREG(st.st_mode):
                out.append((p, rel))
            elif not stat.S_ISDIR(st.st_mode):
                raise RegistryError(f"{root}: {rel} is not a regular file (a FIFO, socket or device): not imported")
    return out


def _copy_folder(src: Path, dest: Path) -> None:
    """Copy ``src`` to the new folder ``dest``: regular files only, links inside ``src`` copied as the files they name,
    never followed out of it (files opened with O_NOFOLLOW, so a link swapped in after the check is not read)."""
    dest.mkdir(parents=True)
    for path, rel in _walk_files(src):
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise RegistryError(f"{src}: cannot read {rel} ({e.strerror})") from e
        with os.fdopen(fd, "rb") as f, open(out, "wb") as g:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise RegistryError(f"{src}: {rel} is not a regular file: not imported")
            shutil.copyfileobj(f, g, 1 << 20)


@dataclass
class AdapterRecord:
    """One version of an adapter in the registry (its folder's lora_whisper.json, plus where it lives)."""

    name: str
    """Family name, e.g. ``fr-medical``."""
    version: int
    """Version number within the family, from 1."""
    language: str
    """Language code the adapter is for (``fr``)."""
    base: dict
    """Base identity: ``hub_id`` and ``fingerprint`` (None when unknown, e.g. imported from the Hub)."""
    domain: str | None = None
    """Domain (``medical``) or None for a general language adapter."""
    lora: dict = field(default_factory=dict)
    """LoRA settings: r, alpha, dropout, target_modules, scope (``encoder+decoder`` or ``decoder``)."""
    metrics: dict = field(default_factory=dict)
    """Evaluation results, e.g. {"before": {"wer": ..}, "after": {"wer": ..}}."""
    recipe: dict = field(default_factory=dict)
    """The recipe as run (empty for imported adapters)."""
    data_fingerprint: str | None = None
    """Hash of the training data (paths, texts, audio bytes)."""
    train_seconds: float | None = None
    """Wall time of training."""
    created: str = ""
    """ISO-8601 UTC time the version was filed."""
    source: str | None = None
    """Where it came from: ``train``, a path, or ``hf://user/repo``."""
    inactive_reason: str | None = None
    """Set when the adapter must not be routed to (e.g. not better than the base on its held-out set); routing never
    picks it, ``--adapter NAME`` still forces it. None: routable."""
    calibration: dict | None = None
    """Routing threshold measured at the end of training (``routing.calibrate``): ``threshold`` and how many of
    its own validation clips and of other languages' real clips it accepts. None: not calibrated."""
    decoding: dict | None = None
    """Decoding defaults this adapter is scored and used with (as a Hub model's ``generation_config.json``), e.g.
    ``{"drop_failed": true}``; a run's own options win. None: the project's defaults."""
    path: Path | None = None
    """The version's folder (not stored in the file)."""
    active: bool = False
    """Whether this is the family's active version (derived from the ``active`` file)."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def decoder_only(self) -> bool:
        return self.lora.get("scope") == "decoder"

    @property
    def routable(self) -> bool:
        """Active and not held back: automatic routing may pick it."""
        return self.active and not self.inactive_reason

    @property
    def figures(self) -> str:
        """What the headline metrics are measured on, e.g. ``real dev`` or ``synthetic-out-of-template test-out``."""
        m = self.metrics or {}
        kind, split = m.get("kind"), m.get("split")
        return " ".join(str(x) for x in (kind, split) if x) or "unknown"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        return d

    @classmethod
    def from_file(cls, path: Path) -> AdapterRecord:
        """The record in a ``lora_whisper.json``, checked whole (``schema.check_record``); RegistryError naming the
        file and every bad field otherwise."""
        try:
            if path.stat().st_size > MAX_METADATA_BYTES:
                raise RegistryError(f"{path}: metadata of {path.stat().st_size} bytes (at most {MAX_METADATA_BYTES})")
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
            if isinstance(e, RegistryError):
                raise
            raise RegistryError(f"{path}: unreadable metadata ({type(e).__name__}: {str(e)[:200]})") from e
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> AdapterRecord:
        """The record of a metadata object read from ``path`` (its folder becomes the record's ``path``)."""
        if not isinstance(data, dict):
            raise RegistryError(f"{path}: metadata must be a JSON object")
        problems = check_record(data)
        if problems:
            raise RegistryError(f"{path}: {'; '.join(problems)}")
        known = {f for f in cls.__dataclass_fields__ if f not in ("path", "active")}
        return cls(**{k: v for k, v in data.items() if k in known}, path=path.parent)

    def check(self) -> None:
        """Raise RegistryError naming every field of this record that the schema refuses."""
        d = self.to_dict()
        problems = check_record({k: v for k, v in d.items() if k not in ("path", "active")})
        if problems:
            raise RegistryError(f"adapter {self.name!r}: {'; '.join(problems)}")

    def save(self, folder: Path) -> None:
        d = self.to_dict()
        d.pop("path")
        d.pop("active")
        _write_atomic(folder / METADATA_FILE, json.dumps(d, indent=2, ensure_ascii=False) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_base(record: AdapterRecord, base: dict) -> None:
    """Raise AdapterMismatchError unless ``record`` was trained on ``base`` ({hub_id, fingerprint}).

    The fingerprints decide when both are known; otherwise the Hub ids must be equal. A record not yet filed
    (version 0) is named by its name alone.
    """
    want, have = record.base or {}, base or {}
    if want.get("fingerprint") and have.get("fingerprint"):
        ok = want["fingerprint"] == have["fingerprint"]
    else:
        ok = want.get("hub_id") == have.get("hub_id")
    if not ok:
        raise AdapterMismatchError(
            f"adapter {record.ref if record.version else repr(record.name)} was trained on base {want.get('hub_id')} ({want.get('fingerprint') or 'no fingerprint'}), "
            f"but the loaded base is {have.get('hub_id')} ({have.get('fingerprint') or 'no fingerprint'})"
        )


@dataclass
class Problem:
    """A folder in the registry that is not a usable adapter, and why."""

    path: str
    message: str


class Registry:
    """Adapters under one folder. Every method re-reads the folders: they are the truth."""

    def __init__(self, root: str | Path | None = None, base: dict | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.base = base
        """The identity ({hub_id, fingerprint}) of the base the adapters are used with, once known: versions made for
        another base are then skipped as problems (and refused by ``add``). None: not checked here."""

    # ---- reading -------------------------------------------------------------------------------------------
    def scan(self) -> tuple[list[AdapterRecord], list[Problem]]:
        """All valid versions (sorted by name, version) and the problems found; never raises for bad folders."""
        records, problems = [], []
        try:
            families = sorted(self.root.iterdir()) if self.root.is_dir() else []
        except OSError as e:  # the registry itself vanished or is unreadable
            logger.warning("registry %s: unreadable (%s)", self.root, e)
            return records, problems
        for fam in families:
            if fam.name.startswith(".") or not fam.is_dir():
                continue
            if not NAME_RE.match(fam.name):
                problems.append(Problem(str(fam), "folder name is not a valid adapter name"))
                continue
            fam_records = []
            try:  # a family removed while we scan is simply gone
                versions = sorted(fam.iterdir(), key=lambda p: (len(p.name), p.name))
            except OSError:
                continue
            for vdir in versions:
                if not vdir.is_dir() or vdir.name.startswith("."):
                    continue
                try:
                    rec = self._read_version(fam.name, vdir)
                except RegistryError as e:
                    if vdir.exists():  # vanished mid-scan (rm, or an atomic replace): not a problem to report
                        problems.append(Problem(str(vdir), str(e)))
                    continue
                except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:  # never raise for one folder
                    if vdir.exists():
                        problems.append(Problem(str(vdir), f"unreadable ({type(e).__name__}: {e})"))
                    continue
                fam_records.append(rec)
            if fam_records:
                active = self._active_version(fam, fam_records)
                for r in fam_records:
                    r.active = r.version == active
                records.extend(fam_records)
            elif fam.is_dir() and not any(p.path.startswith(str(fam)) for p in problems):
                problems.append(Problem(str(fam), "no adapter versions inside"))
        for p in problems:
            _warn_once(f"registry: skipped {p.path}: {p.message}")
        return records, problems

    def _read_version(self, name: str, vdir: Path) -> AdapterRecord:
        if not re.fullmatch(r"v\d+", vdir.name):
            raise RegistryError(f"{vdir}: not a version folder (expected v1, v2, ...)")
        meta = vdir / METADATA_FILE
        if not meta.is_file():
            raise RegistryError(f"{vdir}: no {METADATA_FILE}")
        rec = AdapterRecord.from_file(meta)
        if rec.name != name or f"v{rec.version}" != vdir.name:
            raise RegistryError(f"{meta}: says {rec.name}@{rec.version} but lives in {name}/{vdir.name}")
        check_adapter_files(vdir)
        if self.base:
            check_base(rec, self.base)
        return rec

    def _active_version(self, fam: Path, records: list[AdapterRecord]) -> int:
        versions = {r.version for r in records}
        try:
            v = int((fam / "active").read_text().strip())
            if v in versions:
                return v
        except (OSError, ValueError):
            pass
        return max(versions)

    def list(self) -> list[AdapterRecord]:
        return self.scan()[0]

    def active(self) -> list[AdapterRecord]:
        """The active version of every family."""
        return [r for r in self.list() if r.active]

    def get(self, ref: str) -> AdapterRecord:
        """``name`` (its active version) or ``name@N``; the error lists what exists."""
        name, version = parse_ref(ref)
        found, problems = self.scan()
        records = [r for r in found if r.name == name]
        for r in records:
            if (version is None and r.active) or r.version == version:
                return r
        fam = str(self.root / name)
        unusable = [p for p in problems if p.path == fam or Path(p.path).parent == Path(fam)]
        if version is not None:
            unusable = [p for p in unusable if Path(p.path).name == f"v{version}"] or unusable
        if unusable:  # it is there, but not usable: say why (one line), not "not found"
            raise RegistryError(f"adapter {ref!r} is not usable: {unusable[-1].message}")
        if not records:
            names = sorted({r.name for r in found})
            raise RegistryError(f"adapter {name!r} not found in {self.root}; available: {names or 'none'}")
        raise RegistryError(f"adapter {name!r} has no version {version}; versions: {[r.version for r in records]}")

    def find(self, language: str, domain: str | None = None) -> AdapterRecord | None:
        """The active adapter for exactly (language, domain); None if there is none."""
        for r in self.active():
            if r.language == language and (r.domain or None) == (domain or None):
                return r
        return None

    def routable(self) -> list[AdapterRecord]:
        """The active versions that automatic routing may pick (not held back by ``inactive_reason``)."""
        return [r for r in self.active() if r.routable]

    def languages(self) -> set[str]:
        """Languages that have a routable adapter."""
        return {r.language for r in self.routable()}

    # ---- writing -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """An exclusive lock over the registry (flock; released if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def add(
        self, src: str | Path, record: AdapterRecord, activate: bool = True, extra_files: dict | None = None
    ) -> AdapterRecord:
        """File the adapter files in ``src`` as a new version of ``record.name``; returns the filed record.

        ``src`` is copied, never moved. The version number is assigned here. Nothing is visible in the registry
        until the rename at the end, so a crash leaves at most a ``.tmp-*`` folder that ``list`` ignores.
        """
        check_name(record.name)
        record.check()
        if self.base:
            try:
                check_base(record, self.base)
            except AdapterMismatchError as e:
                raise AdapterMismatchError(f"{e}: not filed (it would not be usable; give its base with --base)") from e
        src = Path(src)
        check_links(src)
        check_adapter_files(src)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            _copy_folder(src, tmp)
            for fname, content in (extra_files or {}).items():
                target = (tmp / fname).resolve()
                if tmp.resolve() not in target.parents:
                    raise RegistryError(f"extra file {fname!r} would escape the adapter folder")
                target.write_text(content) if isinstance(content, str) else target.write_bytes(content)
            with self.lock():
                fam = self.root / record.name
                existing = (
                    [int(p.name[1:]) for p in fam.glob("v*") if re.fullmatch(r"v\d+", p.name)] if fam.is_dir() else []
                )
                record.version = max(existing, default=0) + 1
                record.created = record.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                record.save(tmp)
                AdapterRecord.from_file(tmp / METADATA_FILE)
                check_adapter_files(tmp)
                fam.mkdir(exist_ok=True)
                dest = fam / f"v{record.version}"
                os.rename(tmp, dest)
                if activate:
                    _write_atomic(fam / "active", f"{record.version}\n")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("filed %s in %s", record.ref, self.root)
        return self.get(record.ref)

    def activate(self, ref: str) -> AdapterRecord:
        rec = self.get(ref)
        with self.lock():
            _write_atomic(self.root / rec.name / "active", f"{rec.version}\n")
        return self.get(rec.ref)

    def remove(self, ref: str) -> list[str]:
        """Remove one version (``name@N``) or a whole family (``name``); returns the refs removed."""
        name, version = parse_ref(ref)
        fam = self.root / name
        if not fam.is_dir():
            raise RegistryError(f"adapter {name!r} not found in {self.root}")
        with self.lock():
            if version is None:
                target, removed = fam, [f"{name}@{p.name[1:]}" for p in fam.glob("v*")]
            else:
                target, removed = fam / f"v{version}", [f"{name}@{version}"]
                if not target.is_dir():
                    raise RegistryError(f"adapter {name!r} has no version {version}")
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            os.rename(target, trash)  # atomic: the version disappears at once, then is deleted
            shutil.rmtree(trash, ignore_errors=True)
            if version is not None:  # its compiled copies (ct2 runtime) go with it
                shutil.rmtree(fam / ".compiled" / f"v{version}", ignore_errors=True)
            if version is not None and fam.is_dir() and not any(fam.glob("v*")):
                shutil.rmtree(fam, ignore_errors=True)
        return sorted(removed)

    def export(self, ref: str, out: str | Path) -> Path:
        """Copy a version's folder (standard PEFT layout + metadata) to ``out``."""
        rec = self.get(ref)
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise RegistryError(f"{out}: exists and is not empty")
        shutil.copytree(rec.path, out, dirs_exist_ok=True)
        return out

    def import_folder(
        self,
        src: str | Path,
        name: str | None = None,
        language: str | None = None,
        domain: str | None = None,
        source: str | None = None,
    ) -> AdapterRecord:
        """File a PEFT adapter folder (ours, or any LoRA made with peft) as a new version.

        The folder is checked before anything is read: links out of it, FIFOs and devices are refused
        (``check_links``); its record is checked whole (``schema.check_record``) and, when the registry knows its
        base (``self.base``), must be for that base.
        """
        src = Path(src)
        if not src.is_dir():
            raise RegistryError(f"{src}: not a folder")
        check_links(src)
        config = check_adapter_files(src)
        meta_file = src / METADATA_FILE
        if meta_file.is_file():
            rec = AdapterRecord.from_file(meta_file)
            rec.path, rec.active, rec.version = None, False, 0  # numbered when filed
        else:
            card = _card_metadata(src / "README.md")
            language = language or card.get("language")
            if not language:
                raise RegistryError(f"{src}: no {METADATA_FILE} and no language in its model card: pass --language")
            base_id = config.get("base_model_name_or_path")
            if not base_id:
                raise RegistryError(f"{src / ADAPTER_CONFIG}: no base_model_name_or_path")
            rec = AdapterRecord(
                name=name or src.name.lower(),
                version=0,
                language=language,
                domain=domain,
                base={"hub_id": base_id, "fingerprint": None},
                lora=lora_settings(config),
            )
        rec.name = check_name(name or rec.name)
        rec.language = language or rec.language
        rec.domain = domain or rec.domain
        rec.source = source or str(src)
        rec.created = ""
        return self.add(src, rec)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` once per process: the registry is scanned on every request, a bad folder is news once."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def lora_settings(config: dict) -> dict:
    """The LoRA settings worth showing, from a peft adapter_config.json."""
    targets = config.get("target_modules")
    if isinstance(targets, str):
        encoder = "(encoder|decoder)" in targets or re.search(r"(^|[^_])encoder(\\)?\.", targets)
        scope = "decoder" if "decoder" in targets and not encoder else "encoder+decoder"
    else:
        scope = "encoder+decoder"
    return {
        "r": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "dropout": config.get("lora_dropout"),
        "target_modules": sorted(targets or []) if _strings(targets) else targets,  # anything else: the schema refuses
        "scope": scope,
    }


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _card_metadata(readme: Path) -> dict:
    """Language from a model card's YAML front matter (the first one listed), read by huggingface_hub."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(readme) if readme.is_file() else None
    except (OSError, ValueError, yaml.YAMLError) as e:  # an unreadable card says nothing
        logger.warning("%s: unreadable model card metadata (%s)", readme, str(e).splitlines()[0])
        return {}
    language = (meta or {}).get("language")
    if isinstance(language, list):
        language = language[0] if language else None
    return {"language": language} if isinstance(language, str) else {}


class ResolvesAdapters:
    """``resolve``/``forget_failures`` for the runtimes' adapter holders (the torch ``AdapterPool`` and the ct2
    runtime): find and load an adapter by reference, or remember why not and return a one-line warning, so a run
    goes on with the base. Subclasses give ``load(record)`` and set ``self.registry``, ``self.extra = {}`` and
    ``self._failed = {}``."""

    registry: Registry | None
    extra: dict[str, AdapterRecord]
    _failed: dict[str, str]

    def record(self, ref: str) -> AdapterRecord:
        """The record of ``ref``: one added with ``add``, else the registry's."""
        if ref in self.extra:
            return self.extra[ref]
        if self.registry is None:
            raise RegistryError(f"adapter {ref!r}: no registry")
        return self.registry.get(ref)

    def add(self, record: AdapterRecord) -> None:
        """Make an adapter that is not (yet) in the registry resolvable by its reference (used after training)."""
        self.extra[record.ref] = record

    def resolve(self, ref: str) -> tuple[AdapterRecord | None, str | None]:
        """(record, None) with the adapter loaded, or (None, warning): the run goes on with the base."""
        if ref in self._failed:
            return None, self._failed[ref]
        try:
            rec = self.record(ref)
            self.load(rec)
            return rec, None
        except RegistryError as e:
            msg = f"{e}; using the base instead"
            self._failed[ref] = msg
            logging.getLogger("lora_whisper").warning(msg)
            return None, msg

    def forget_failures(self) -> None:
        """Try failed references again on the next request (the registry may have changed)."""
        self._failed.clear()
