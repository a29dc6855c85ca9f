"""The click command ``lora-whisper batch``: its options, and their parsing into ``TranscribeOptions`` (``--set``,
``--combine-weights``, checked against the runtime), ``EngineSpec`` (from the global options) and ``BatchOptions``;
it runs ``run_batch`` and exits 1 when the merged output has error rows."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from .inputs import INPUT_TYPES
from .options import BatchError, BatchOptions, EngineSpec
from .pipeline import run_batch
from .resume import FORMATS


def _parse_set(values: tuple[str, ...]) -> dict:
    """``--set key=value`` pairs for TranscribeOptions fields (values parsed as YAML: 0.2, true, [0.0, 0.2])."""
    import yaml

    from ..transcribe.engine import TranscribeOptions

    known = {f.name for f in dataclasses.fields(TranscribeOptions)}
    out = {}
    for v in values:
        key, eq, raw = v.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in known:
            raise click.BadParameter(f"{v!r}: give FIELD=VALUE with FIELD one of {sorted(known)}", param_hint="--set")
        value = yaml.safe_load(raw)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="jsonl",
    show_default=True,
    help="Merged output: JSON lines (as transcribe --format json) or Parquet.",
)
@click.option("--num-workers", default=1, show_default=True, type=click.IntRange(1), help="Transcription actors.")
@click.option(
    "--num-gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0), help="GPUs per actor (0 = CPU)."
)
@click.option("--cpus-per-worker", default=1.0, show_default=True, type=click.FloatRange(0), help="CPUs per actor.")
@click.option(
    "--address",
    default=None,
    help="Ray cluster: 'auto' (a cluster started on this node) or ray://HOST:10001; default: local Ray.",
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="Files per actor call (and chunks per generate call).",
)
@click.option("--no-group", is_flag=True, help="Skip the detection pass that groups files by adapter.")
@click.option(
    "--max-retries",
    default=3,
    show_default=True,
    type=click.IntRange(0),
    help="Restarts of a dead actor and retries of its work.",
)
@click.option("--input-type", type=click.Choice(INPUT_TYPES), default="auto", show_default=True)
@click.option("--split", default="test", show_default=True, help="Data sets: split.")
@click.option("--config", "ds_config", default=None, help="Data sets: configuration (e.g. fr_fr).")
@click.option("--audio-column", default="audio", show_default=True, help="Data sets: audio column.")
@click.option("--id-column", default="id", show_default=True, help="Manifests and data sets: row id column.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Data sets: at most this many rows.")
@click.option("--progress-every", default=10.0, show_default=True, help="Seconds between progress lines.")
@click.option("--language", default=None, help="Force the language (skip detection).")
@click.option("--languages", default=None, help="Restrict detection to these languages: fr,de,es.")
@click.option("--adapter", default="auto", show_default=True, help="auto (route), none (base), or NAME[@VERSION].")
@click.option("--domain", default=None, help="Prefer the adapter for this domain (or domains, in order).")
@click.option(
    "--route", "route_mode", type=click.Choice(["per-file", "per-segment"]), default="per-file", show_default=True
)
@click.option("--threshold", default=0.5, show_default=True, help="Minimum language probability to use an adapter.")
@click.option(
    "--beam-size", type=int, default=None, help="1 = greedy. Default: as the routed adapter's record says, else 1."
)
@click.option("--merge", is_flag=True, help="Merge each adapter into the weights while it is used.")
@click.option(
    "--combine",
    type=click.Choice(["linear", "cat", "ties"]),
    default=None,
    help="With --domain: combine the language and domain adapters.",
)
@click.option("--combine-weights", default="1,1", show_default=True)
@click.option("--batching", type=click.Choice(["grouped", "mixed"]), default="grouped", show_default=True)
@click.option(
    "--consult-below",
    default=0.8,
    show_default=True,
    help="Ask the candidate adapters when the base's language probability is below this (0: never).",
)
@click.option(
    "--set",
    "extra",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Any other transcription option by name (task=translate, temperature=[0.0,0.2], vad=true).",
)
@click.pass_context
def batch(ctx, inputs, **params):
    """Transcribe an archive on Ray Data (local by default): folders, globs, JSONL/CSV manifests or a data set.

    Rows go to OUT/transcripts.jsonl (the fields of `transcribe --format json`, one row per input); a rerun with the
    same --out skips inputs already done.
    """
    topts = _transcribe_options(**params)
    spec = _engine_spec(ctx.obj or {}, topts)
    options = _batch_options(**params)

    def echo(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        summary = run_batch(list(inputs), options, spec, topts, echo=echo)
    except BatchError as e:
        raise click.ClickException(str(e)) from e
    echo(summary.line())
    sys.exit(1 if summary.errors_total else 0)


def _transcribe_options(
    *,
    language,
    languages,
    adapter,
    domain,
    threshold,
    route_mode,
    batch_size,
    beam_size,
    merge,
    combine,
    combine_weights,
    batching,
    consult_below,
    extra,
    **_batch_params,
):
    """``TranscribeOptions`` from the command's transcription options, ``--set`` pairs last.

    Raises:
        click.BadParameter: ``--combine-weights`` is not two numbers, or a ``--set`` field is unknown.
        click.ClickException: the options are invalid together.
    """
    from ..transcribe.engine import TranscribeOptions

    try:
        weights = tuple(float(w) for w in _csv(combine_weights) or [])
    except ValueError:
        weights = ()
    if len(weights) != 2:
        raise click.BadParameter(f"{combine_weights!r}: give two numbers, e.g. 0.7,0.3", param_hint="--combine-weights")
    kw = dict(
        language=language,
        languages=_csv(languages),
        adapter=adapter,
        domain=_csv(domain),
        threshold=threshold,
        per_segment=route_mode == "per-segment",
        batch_size=batch_size,
        beam_size=beam_size,
        merge=merge,
        combine=combine,
        combine_weights=weights,
        batching=batching,
        consult_below=consult_below,
    )
    kw.update(_parse_set(extra))
    try:
        topts = TranscribeOptions(**kw)
        if hasattr(topts, "validate"):
            topts.validate()
    except (TypeError, ValueError) as e:
        raise click.ClickException(f"transcription options: {e}") from e
    return topts


def _engine_spec(o: dict, topts) -> EngineSpec:
    """How each actor builds its Engine, from the global options (``--base``, ``--quantize``, ``--registry``, ...).

    Raises:
        click.ClickException: the runtime cannot honour ``topts``.
    """
    from ..transcribe.runtime import TorchOnlyError, check_runtime_options, resolve_runtime

    registry = o.get("registry") or "adapters"
    spec = EngineSpec(
        base=o.get("base", "offline"),
        quantize=o.get("quantize", "int8"),
        device=o.get("device"),
        registry=registry if Path(registry).is_dir() else None,
        cache_size=o.get("cache_size", 4),
        runtime=o.get("runtime", "auto"),
        threads=o.get("threads", 0),
    )
    if spec.runtime == "auto":
        # batch stays on torch unless asked: its actors micro-batch rows through the torch runtime, while the ct2
        # runtime decodes them file by file (explicit --runtime ct2 runs there)
        spec.runtime = "torch"
    try:
        check_runtime_options(resolve_runtime(spec.runtime, spec.device), topts)
    except TorchOnlyError as e:
        raise click.ClickException(str(e)) from e
    return spec


def _batch_options(
    *,
    out_dir,
    fmt,
    num_workers,
    num_gpus_per_worker,
    cpus_per_worker,
    address,
    batch_size,
    no_group,
    max_retries,
    input_type,
    split,
    ds_config,
    audio_column,
    id_column,
    limit,
    progress_every,
    **_transcribe_params,
) -> BatchOptions:
    """``BatchOptions`` from the command's run options."""
    return BatchOptions(
        out=Path(out_dir),
        fmt=fmt,
        num_workers=num_workers,
        num_gpus_per_worker=num_gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        address=address,
        batch_size=batch_size,
        group=not no_group,
        max_retries=max_retries,
        input_type=input_type,
        split=split,
        config=ds_config,
        audio_column=audio_column,
        id_column=id_column,
        limit=limit,
        progress_every=progress_every,
    )
