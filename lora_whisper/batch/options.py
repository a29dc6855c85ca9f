"""Settings and records of a batch run, shared by every stage: ``BatchOptions`` (the run), ``EngineSpec`` (how each
actor builds its Engine), ``Item`` (one input), ``BatchSummary`` (what a run did) and ``BatchError``.

Standard library only: the Ray workers and the CLI import it without cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class BatchError(RuntimeError):
    """A batch run cannot start (no inputs, unreadable manifest, no Ray); the message says what and where."""


@dataclass
class BatchOptions:
    """Settings of one batch run (the transcription options are a separate ``TranscribeOptions``)."""

    out: Path
    """Output folder: ``parts/`` (one JSON lines file per run) and the merged ``transcripts.jsonl``/``.parquet``."""
    fmt: str = "jsonl"
    """Merged output format: ``jsonl`` (same lines as ``transcribe --format json``) or ``parquet``."""
    num_workers: int = 1
    """Transcription actors (each loads the base once)."""
    num_gpus_per_worker: float = 0.0
    """GPUs reserved per actor (0 = CPU; fractions share a GPU between actors)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per actor (Ray sets the actor's thread count from it)."""
    decode_cpus: float = 0.5
    """CPUs reserved per decoding task."""
    address: str | None = None
    """Ray cluster to join: ``auto`` or ``ray://host:10001``; None starts a local Ray on this machine."""
    batch_size: int = 8
    """Files per actor call; a call never mixes routes."""
    group: bool = True
    """Detect first and group files by routed adapter (skipped when the route does not depend on the audio)."""
    max_retries: int = 3
    """Restarts of a dead actor and retries of its unit (a worker killed mid-run loses nothing)."""
    input_type: str = "auto"
    """``auto``, ``files`` (folders, globs, audio files), ``manifest`` (JSONL/CSV) or ``hf`` (a data set id or folder)."""
    split: str = "test"
    """Hugging Face data sets: the split."""
    config: str | None = None
    """Hugging Face data sets: the configuration (e.g. a language)."""
    audio_column: str = "audio"
    """Hugging Face data sets: the audio column (manifests: ``audio`` or ``path``)."""
    id_column: str = "id"
    """Manifests and data sets: the column naming each row (optional; else the file name or row number)."""
    limit: int | None = None
    """Hugging Face data sets: at most this many rows."""
    progress_every: float = 10.0
    """Seconds between progress lines on stderr (0 = after every unit)."""


@dataclass
class EngineSpec:
    """How each actor builds its Engine (paths must be visible from every node of a cluster)."""

    base: str = "offline"
    """``offline``, a local folder or a Hub id."""
    quantize: str = "int8"
    """``int8`` or ``none``."""
    device: str | None = None
    """``cpu``, ``cuda`` or None (cuda when the actor has a GPU)."""
    registry: str | None = None
    """Adapter registry folder (None: the base only)."""
    cache_size: int = 4
    """Resident adapters per actor (LRU)."""
    runtime: str = "torch"
    """``torch``, ``ct2`` or ``auto`` (ct2 on an actor without a GPU, torch with one); see ``runtime.py``."""
    threads: int = 0
    """CPU threads per actor's engine (0: the runtime's default)."""


@dataclass
class Item:
    """One input: a file (``path``) or audio bytes from a data set (``data``)."""

    index: int
    """Position in the input list (the merged output keeps this order)."""
    key: str
    """The row's identity in the output: ``id`` when given, else ``file``."""
    file: str
    """The ``file`` field of its row."""
    id: str | None = None
    path: str | None = None
    data: bytes | None = None
    error: str | None = None
    """Set when the input itself is unusable (a bad manifest row): it becomes an error row without decoding."""


@dataclass
class BatchSummary:
    """What a run did."""

    inputs: int = 0
    """Inputs given (one row each in the merged output)."""
    skipped: int = 0
    """Inputs already done in ``--out`` (resume)."""
    done: int = 0
    """Rows written by this run."""
    errors: int = 0
    """Error rows written by this run."""
    errors_total: int = 0
    """Error rows in the merged output."""
    audio_seconds: float = 0.0
    """Audio transcribed by this run."""
    wall_seconds: float = 0.0
    """Wall time of this run (Ray start included)."""
    transcribe_seconds: float = 0.0
    """Wall time of the transcription pass alone (from its first row requested to its last row)."""
    detect_seconds: float = 0.0
    """Wall time of the detection pass (0 when skipped)."""
    detected: int = 0
    """Files whose route the detection pass computed (routes kept from an earlier run with the same options and
    adapters are not detected again)."""
    routes: dict[str, int] = field(default_factory=dict)
    """Units per route (adapter reference or ``base``) in the transcription pass."""
    output: str = ""
    """The merged output file."""

    def line(self) -> str:
        rate = self.done / self.wall_seconds if self.wall_seconds else 0.0
        rtf = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return (
            f"batch: {self.done} done ({self.errors} errors), {self.skipped} skipped as already done, "
            f"{self.inputs} inputs; {self.audio_seconds / 3600:.3f} h audio in {self.wall_seconds:.1f} s "
            f"({rate:.2f} files/s, {rtf:.1f}x real time); output {self.output} ({self.errors_total} error rows)"
        )
