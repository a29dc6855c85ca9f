"""Command line: each subcommand parses options and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__

logger = logging.getLogger("lora_whisper")


class _OneLine(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: int) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_OneLine())
    logger.handlers[:] = [h]
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _registry(ctx):
    from .adapters.registry import Registry

    return Registry(ctx.obj["registry"])


def _runtime_kind(ctx, options=None) -> str:
    from .transcribe.runtime import resolve_runtime

    return resolve_runtime(ctx.obj.get("runtime", "auto"), ctx.obj.get("device"), options)


def _engine(ctx, quantize: str | None = None, options=None):
    """The engine over the runtime the global options ask for (``--runtime``; auto: ct2 on CPU, torch on CUDA)."""
    from .adapters.registry import RegistryError
    from .base.loading import BaseModelError
    from .transcribe.runtime import build_engine

    o = ctx.obj
    try:
        engine = build_engine(
            o["base"],
            quantize or o["quantize"],
            o["device"],
            _registry(ctx),
            cache_size=o["cache_size"],
            runtime=o.get("runtime", "auto"),
            threads=o.get("threads", 0),
            options=options,
            workers=o.get("workers", 1),
        )
    except (BaseModelError, RegistryError) as e:
        _fail(str(e).splitlines()[0])
    if engine.registry is not None:  # adapters made for another base are skipped (one warning), never routed to
        engine.registry.base = engine.base.identity.to_dict()
    return engine


def _declared_base(ctx) -> dict:
    """The identity --base declares (its Hub id), known without loading it: adapters are checked against it."""
    from .base.loading import declared_identity

    return declared_identity(ctx.obj["base"])


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr, disable=total < 2 or not sys.stderr.isatty())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
@click.option(
    "--registry",
    type=click.Path(file_okay=False),
    envvar="LORA_WHISPER_ADAPTERS",
    default="adapters",
    show_default=True,
    help="Adapter registry folder (env LORA_WHISPER_ADAPTERS).",
)
@click.option(
    "--base",
    "base",
    default="offline",
    show_default=True,
    envvar="LORA_WHISPER_BASE",
    help="Base model: 'offline' (packaged whisper-base), a local folder, or a Hub id (openai/whisper-small).",
)
@click.option(
    "--quantize",
    type=click.Choice(["auto", "int8", "dynamic", "none"]),
    default="auto",
    show_default=True,
    help="Frozen base: int8 (bitsandbytes 8-bit), dynamic (torch dynamic int8, CPU inference only) or none "
    "(float32). auto: training as the recipe says, inference 8-bit on CUDA and float32 on CPU.",
)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "torch", "ct2"]),
    default="auto",
    show_default=True,
    envvar="LORA_WHISPER_RUNTIME",
    help="Inference runtime (env LORA_WHISPER_RUNTIME). ct2: CTranslate2 through faster-whisper, adapters compiled "
    "on first use (merged, int8 with --quantize auto/int8, float32 with none). torch: transformers + peft; needed "
    "for --merge, --combine, --batching mixed, --route per-segment (hot swap without merging). auto: ct2 on CPU, "
    "torch on CUDA or when a torch-only option is given. Training always runs on torch.",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1024),
    help="CPU threads for inference (0: the runtime's default).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="LORA_WHISPER_WORKERS",
    help="ct2 runtime (env LORA_WHISPER_WORKERS): files decoded at once (faster-whisper's num_workers), each on "
    "--threads threads (0: the CPU cores shared out); serve's "
    "micro-batches and transcribe's file lists use them. With more than 1, temperature-fallback sampling is not "
    "repeatable run to run.",
)
@click.option(
    "--cache-size",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Adapters kept resident (LRU): peft adapters on torch, compiled models on ct2.",
)
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
@click.pass_context
def main(ctx, registry, base, quantize, device, runtime, threads, workers, cache_size, verbose):
    """lora-whisper: LoRA adapters for Whisper, per language and domain.

    Inference runs on CTranslate2 (faster-whisper's pipeline) on CPU and on torch on CUDA; see --runtime.
    """
    _setup_logging(verbose)
    # torch's libraries are quieted where they load (base.load_model, runtime.build_engine): a ct2 run never
    # imports them
    ctx.obj = dict(
        registry=registry,
        base=base,
        quantize=quantize,  # "auto" is resolved where the base loads (base.resolve_quantize)
        device=device,
        runtime=runtime,
        threads=threads,
        workers=workers,
        cache_size=cache_size,
        quantize_given=quantize != "auto",
    )


# ---- base ----------------------------------------------------------------------------------------------------
@main.group()
def base():
    """Base models."""


@base.command("import-ct2")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--hub-id", default=None, help="Hub id the weights come from (recorded in adapters), e.g. openai/whisper-base."
)
def base_import_ct2(src, out, hub_id):
    """Convert a CTranslate2 / faster-whisper model folder SRC into a transformers model folder OUT."""
    from .base.ct2 import CT2FormatError, import_ct2

    try:
        path = import_ct2(src, out, hub_id=hub_id)
    except (CT2FormatError, FileNotFoundError) as e:
        _fail(str(e))
    click.echo(str(path))


@base.command("info")
@click.pass_context
def base_info(ctx):
    """Show the base's identity (hub id, weight fingerprint, path)."""
    from .base.loading import load_base

    b = load_base(ctx.obj["base"], ctx.obj["quantize"], ctx.obj["device"])
    click.echo(
        json.dumps(
            {
                **b.identity.to_dict(),
                "path": str(b.path),
                "quantize": b.quantize,
                "device": b.device,
                "languages": len(b.languages),
            },
            indent=2,
        )
    )


# ---- transcribe / detect / eval ------------------------------------------------------------------------------
def _transcribe_options(**kw):
    from .transcribe.engine import TranscribeOptions

    return TranscribeOptions(**kw)


def _decoding_options(f):
    """The decoding options shared by transcribe, eval, serve-like commands (openai-whisper / faster-whisper names)."""
    opts = [
        click.option("--task", type=click.Choice(["transcribe", "translate"]), default="transcribe", show_default=True),
        click.option(
            "--beam-size",
            type=int,
            default=None,
            help="1 = greedy. Default: as the routed adapter's record says (its recipe's eval.beam_size), else 1.",
        ),
        click.option(
            "--temperature",
            default="0,0.2,0.4,0.6,0.8,1.0",
            show_default=True,
            help="Temperatures tried in turn when a window fails the checks below (one value: no fallback).",
        ),
        click.option("--compression-ratio-threshold", type=float, default=2.4, show_default=True),
        click.option("--logprob-threshold", type=float, default=-1.0, show_default=True),
        click.option("--no-speech-threshold", type=float, default=0.6, show_default=True),
        click.option(
            "--condition-on-previous-text/--no-condition-on-previous-text",
            default=True,
            show_default=True,
            help="Prompt each window with the text before it.",
        ),
        click.option("--initial-prompt", default=None, help="Text to prompt the first window with (names, style)."),
        click.option("--word-timestamps", is_flag=True, help="Words with times (alignment heads; slower)."),
        click.option("--vad/--no-vad", default=False, show_default=True, help="Decode speech only (Silero VAD)."),
        click.option(
            "--long-form",
            type=click.Choice(["sequential", "batched"]),
            default="sequential",
            show_default=True,
            help="Long audio: Whisper's sequential algorithm, or VAD pieces of <= 30 s decoded in batches (faster; "
            "first temperature only, no fallback, like faster-whisper's batched pipeline).",
        ),
        click.option("--max-new-tokens", type=int, default=None, help="Token limit per window."),
        click.option(
            "--drop-failed/--keep-failed",
            default=None,
            help="Leave out (or keep, as Whisper does) a window whose every temperature failed the checks above. "
            "Default: as the routed adapter's record says (its recipe's eval.drop_failed); the base keeps them.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _parse_temperature(value: str) -> tuple[float, ...]:
    try:
        temps = tuple(float(t) for t in _csv(value) or [])
    except ValueError:
        temps = ()
    if not temps or any(t < 0 for t in temps):
        _fail(f"--temperature {value!r}: give one or more numbers >= 0, e.g. 0 or 0,0.2,0.4,0.6,0.8,1.0")
    return temps


def _language_codes() -> set[str]:
    """Whisper's language codes, without importing transformers when faster-whisper is there (ct2 runs)."""
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return set(_LANGUAGE_CODES)
    except ImportError:  # pragma: no cover - faster-whisper is a dependency
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        return set(LANGUAGES)


def _check_languages(codes: list[str | None], flag: str) -> None:
    """Whisper's language codes (names too, as openai-whisper accepts), checked before any model loads."""
    known = _language_codes()
    for c in codes:
        if c is not None and c not in known:
            _fail(f"{flag} {c!r} is not a Whisper language code; choose from: {', '.join(sorted(known))}")


def _normalize_language(code: str | None) -> str | None:
    if code is None:
        return None
    if code.lower() in _language_codes():
        return code.lower()
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE  # names: "french" -> "fr"

    return TO_LANGUAGE_CODE.get(code.lower(), code.lower())


def _check_adapter(ctx, adapter: str) -> None:
    """An adapter the user named must exist (one line listing the active ones), before any model loads."""
    if adapter in ("auto", "none", "", None):
        return
    from .adapters.registry import RegistryError, check_base

    reg = _registry(ctx)
    try:
        check_base(reg.get(adapter), _declared_base(ctx))
    except RegistryError as e:
        names = ", ".join(r.ref for r in reg.active()) or "none filed"
        _fail(f"--adapter {adapter!r}: {e}; available: {names}")


def _check_bounds(options) -> None:
    """Numbers out of range, NaN, wrong types (``transcribe.bounds``): one line naming the flag, before any model
    loads."""
    from .transcribe import bounds

    if bad := bounds.problems(options):
        name, rest = bad[0].split(" ", 1)
        _fail(f"--{name.replace('_', '-')} {rest}")


def _build_options(ctx, *, language=None, languages=None, adapter="auto", temperature="0", **kw):
    """TranscribeOptions from command-line values, validated before any model loads (exit 2, one line)."""
    language = _normalize_language(language)
    langs = [_normalize_language(x) for x in (_csv(languages) or [])] or None
    _check_languages([language], "--language")
    _check_languages(langs or [], "--languages")
    _check_adapter(ctx, adapter)
    options = _transcribe_options(
        language=language, languages=langs, adapter=adapter, temperature=_parse_temperature(temperature), **kw
    )
    try:
        options.validate()
    except ValueError as e:
        _fail(str(e))
    _check_bounds(options)
    try:
        from .transcribe.runtime import check_runtime_options

        check_runtime_options(_runtime_kind(ctx, options), options)
    except ValueError as e:
        _fail(str(e))
    return options


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["txt", "json", "srt", "vtt"]), default="txt", show_default=True)
@click.option("--language", default=None, help="Force the language (skip detection).")
@click.option("--languages", default=None, help="Restrict detection to these languages: fr,de,es.")
@click.option("--adapter", default="auto", show_default=True, help="auto (route), none (base), or NAME[@VERSION].")
@click.option(
    "--domain", default=None, help="Prefer the adapter for this domain (or domains, in order: medical,legal)."
)
@click.option(
    "--route",
    "route_mode",
    type=click.Choice(["per-file", "per-segment"]),
    default="per-file",
    show_default=True,
    help="per-file: detect on the first 30 s of speech; per-segment: detect and route every VAD segment (torch "
    "runtime only).",
)
@click.option("--threshold", default=0.5, show_default=True, help="Minimum language probability to use an adapter.")
@click.option("--batch-size", default=8, show_default=True)
@_decoding_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Write FILE.<format> here.")
@click.option(
    "--merge",
    is_flag=True,
    help="Merge each adapter into the weights while it is used (fp32 copy if 8-bit). Torch runtime only (ct2 "
    "adapters are always compiled merged).",
)
@click.option(
    "--combine",
    type=click.Choice(["linear", "cat", "ties"]),
    default=None,
    help="With --domain: combine the language adapter and the domain adapter (peft add_weighted_adapter). "
    "Torch runtime only.",
)
@click.option(
    "--combine-weights", default="1,1", show_default=True, help="Weights of the language and domain adapters."
)
@click.option(
    "--batching",
    type=click.Choice(["grouped", "mixed"]),
    default="grouped",
    show_default=True,
    help="One generate call per adapter, or rows of several adapters in one call (peft adapter_names; torch "
    "runtime only).",
)
@click.option(
    "--consult-below",
    default=0.8,
    show_default=True,
    help="Ask the candidate adapters when the base's language probability is below this (0: never).",
)
@click.option("--verbose-route", "verbose_route", is_flag=True, help="Print the route of each file to stderr.")
@click.pass_context
def transcribe(ctx, paths, fmt, route_mode, out_dir, combine_weights, verbose_route, **kw):
    """Transcribe audio files or folders, routing each to the right adapter.

    Long files are decoded like Whisper (timestamps, previous-text prompt, temperature fallback); SRT/VTT cues are
    the decoded segments.
    """
    from .transcribe.engine import FileError
    from .transcribe.output import render

    try:
        weights = tuple(float(w) for w in _csv(combine_weights) or [])
    except ValueError:
        weights = ()
    if len(weights) != 2:
        _fail(f"--combine-weights {combine_weights!r}: give two numbers, e.g. 0.7,0.3")
    kw["domain"] = _csv(kw["domain"])
    options = _build_options(ctx, per_segment=route_mode == "per-segment", combine_weights=weights, **kw)
    from .transcribe.output import output_names

    files = _inputs(paths)
    names = output_names(files, fmt) if out_dir else {}
    engine = _engine(ctx, options=options)
    failed = 0
    with _progress(len(files), "transcribe") as bar:
        for res in engine.transcribe(files, options, progress=None):
            bar.update(1)
            if isinstance(res, FileError):
                failed += 1
                click.echo(f"error: {res.error}", err=True)
                continue
            for w in res.warnings:
                click.echo(f"warning: {res.file}: {w}", err=True)
            if verbose_route:
                click.echo(
                    f"{res.file}: language={res.language} p={res.language_probability} adapter={res.adapter} "
                    f"merged={res.merged} ({res.route})",
                    err=True,
                )
            text = render(res, fmt)
            if out_dir:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                dest = Path(out_dir) / names.get(res.file, f"{Path(res.file).stem}.{fmt}")
                dest.write_text(text, encoding="utf-8")
            else:
                click.echo(text, nl=False)
    sys.exit(1 if failed else 0)


def _inputs(paths) -> list:
    """The audio files PATHS name (folders expanded), before any model loads: a folder without audio is an error."""
    from .transcribe.audio import AUDIO_EXTENSIONS, expand_inputs

    for p in paths:
        if Path(p).is_dir() and not expand_inputs([p]):
            _fail(f"{p}: no audio files in this folder (looked for {', '.join(AUDIO_EXTENSIONS)})")
    return expand_inputs(list(paths))


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--languages", default=None, help="Restrict detection to these languages: fr,de,es.")
@click.option("--top-k", default=5, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.pass_context
def detect(ctx, paths, languages, top_k, fmt, batch_size):
    """Print language probabilities detected from the audio."""
    from .transcribe.engine import FileError

    files = _inputs(paths)
    options = _transcribe_options(languages=_csv(languages), top_k=top_k, batch_size=batch_size, adapter="none")
    _check_bounds(options)
    engine = _engine(ctx)
    failed = 0
    for res in engine.detect(files, options):
        if isinstance(res, FileError):
            failed += 1
            click.echo(f"error: {res.error}", err=True)
        elif fmt == "json":
            click.echo(json.dumps(res.to_dict(), ensure_ascii=False))
        else:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in res.languages.items())
            click.echo(f"{res.file}\t{res.language}\t{probs}")
    sys.exit(1 if failed else 0)


def _load_data(src: str, language: str | None, split: str, audio_column: str, text_column: str, limit: int | None):
    from .train.data import DataError, load_folder, load_hub, load_manifest

    p = Path(src)
    try:
        if p.is_dir():
            return load_folder(p, language=language)
        if p.suffix.lower() in (".jsonl", ".csv", ".json"):
            return load_manifest(p, audio_column, text_column, language=language)
        if p.exists():
            _fail(f"{src}: not a folder or a .jsonl/.csv manifest")
        return load_hub(src, None, split, audio_column, text_column, language, limit)
    except DataError as e:
        _fail(str(e))


@main.command("eval")
@click.option("--data", "src", required=True, help="Folder (audiofolder), manifest (.jsonl/.csv) or Hub data set id.")
@click.option("--adapter", default="none", show_default=True, help="none (base), auto (route), or NAME[@VERSION].")
@click.option("--language", default=None, help="Force this language for every row (else each row's own).")
@click.option("--domain", default=None, help="Prefer the adapter for this domain (a comma list is tried in order).")
@click.option("--split", default="test", show_default=True, help="Hub data sets: split.")
@click.option("--audio-column", default="audio", show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--limit", type=int, default=None, help="Hub data sets: at most this many rows.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--rows", is_flag=True, help="Also print every reference/hypothesis pair (json).")
@click.pass_context
def eval_cmd(ctx, src, adapter, language, domain, split, audio_column, text_column, limit, fmt, rows):
    """WER and CER (raw and normalized) of the base or an adapter on a data set."""
    from .train.evaluation import evaluate

    loaded = _load_data(src, None, split, audio_column, text_column, limit)
    for r in loaded.rejected:
        click.echo(f"error: {r.id}: {r.reason}", err=True)
    engine = _engine(ctx)
    options = _transcribe_options(language=language, adapter=adapter, domain=_csv(domain))
    with _progress(len(loaded.examples), "eval") as bar:
        report = evaluate(engine, loaded.examples, options, progress=bar.update)
    for e in report.errors:
        click.echo(f"error: {e}", err=True)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(rows=rows), ensure_ascii=False))
    else:
        _print_scores(report)
    sys.exit(1 if (report.errors or loaded.rejected) else 0)


def _print_scores(report) -> None:
    click.echo(f"{'language':<10}{'n':>5}{'WER':>9}{'CER':>9}{'WER raw':>9}{'CER raw':>9}")
    items = list(report.by_language.items()) + ([("all", report.overall)] if len(report.by_language) > 1 else [])
    for lang, s in items:
        click.echo(f"{lang:<10}{s.n:>5}{s.wer:>9.3f}{s.cer:>9.3f}{s.wer_raw:>9.3f}{s.cer_raw:>9.3f}")


# ---- train ------------------------------------------------------------------------------------------------------
@main.command()
@click.option("--lang", "language", default=None, help="Language code (fr). Picks recipes/<lang>-<domain>.yaml.")
@click.option("--domain", default=None, help="Domain (medical).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), default=None, help="Recipe YAML file.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe field: --set train.lr=1e-4 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint of this recipe's run folder.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_context
def train(ctx, language, domain, recipe_path, overrides, resume, no_progress):
    """Train a LoRA adapter on the frozen base and file it in the registry.

    Training runs on torch; the before/after figures are measured on the runtime `transcribe` uses (--runtime).
    """
    from .base.loading import quiet_libraries
    from .train.recipe import RecipeError, find_recipe, load_recipe

    quiet_libraries()

    if recipe_path is None:
        if not language:
            _fail("give --lang (and --domain) or --recipe")
        recipe_path = find_recipe(language, domain)
    fields = {"language": language, "domain": domain}
    if recipe_path is None and language:
        from .train.synth import corpus_path

        name = f"{language}-{domain}" if domain else language
        try:
            corpus_path(name)
            fields["data"] = {"source": "synthetic", "corpus": name}
        except FileNotFoundError:
            pass
    ov = list(overrides)
    if ctx.obj["base"] != "offline":
        ov.append(f"base.model={ctx.obj['base']}")
    try:
        recipe = load_recipe(recipe_path, ov, **fields)
    except RecipeError as e:
        _fail(str(e))
    if ctx.obj["quantize_given"]:
        recipe.base.quantize = ctx.obj["quantize"]
    logger.info(
        "recipe %s: %s/%s, %s LoRA r=%d",
        recipe_path or "(generic)",
        recipe.language,
        recipe.domain,
        recipe.lora.scope,
        recipe.lora.r,
    )
    from .base.loading import BaseModelError
    from .train.trainer import train as run_train

    try:
        result = run_train(
            recipe,
            _registry(ctx),
            resume=resume,
            progress=not no_progress,
            device=ctx.obj["device"],
            runtime=ctx.obj.get("runtime", "auto"),
        )
    except (ValueError, FileNotFoundError, BaseModelError) as e:
        _fail(str(e).splitlines()[0])
    for r in result.rejected:
        click.echo(f"warning: skipped {r.id}: {r.reason}", err=True)
    if result.record is None:
        return
    b, a = result.before, result.after
    click.echo(f"adapter   {result.record.ref}  ({result.record.path})")
    click.echo(f"steps     {result.steps}   training time {result.train_seconds:.0f} s")
    if b:
        change = (a.wer - b.wer) / b.wer if b.wer else float("nan")
        verdict = "better" if a.wer < b.wer else "worse" if a.wer > b.wer else "unchanged"
        click.echo(f"WER       {b.wer:.3f} -> {a.wer:.3f}  ({change:+.0%} relative: {verdict})")
        click.echo(f"CER       {b.cer:.3f} -> {a.cer:.3f}")
    else:
        click.echo(f"WER       {a.wer:.3f}   CER {a.cer:.3f}")
    click.echo(f"measured  on {result.record.figures} ({result.record.metrics.get('held_out')} clips)")
    if result.record.inactive_reason:  # the library has logged the warning; the summary says it once more, on stdout
        click.echo(f"routing   INACTIVE ({result.record.inactive_reason}); --adapter {result.record.name} forces it")
    if result.step_seconds:
        from .train.steps import step_table

        click.echo(step_table(result.step_seconds))


@main.command("export")
@click.argument("ref")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--ct2", is_flag=True, help="Also write a CTranslate2 model for faster-whisper (OUT/ct2).")
@click.option("--ct2-quantization", default="int8", show_default=True, help="CTranslate2 weight type.")
@click.pass_context
def export_cmd(ctx, ref, out_dir, ct2, ct2_quantization):
    """Write a full merged model (transformers format), optionally also for faster-whisper."""
    from .adapters.export import export_merged

    paths = _registry_call(
        export_merged,
        _registry(ctx),
        ref,
        out_dir,
        base=ctx.obj["base"],
        ct2=ct2,
        ct2_quantization=ct2_quantization,
        device=ctx.obj["device"] or "cpu",
    )
    for p in paths:
        click.echo(str(p))


# ---- registry -------------------------------------------------------------------------------------------------
@main.group()
def adapters():
    """The adapter registry: list, show, rm, import, export, activate, compile."""


def _registry_call(fn, *args, **kw):
    from .adapters.hub import HubError
    from .adapters.registry import RegistryError

    try:
        return fn(*args, **kw)
    except (RegistryError, HubError) as e:
        _fail(str(e))


def _threshold(record) -> str:
    t = (getattr(record, "calibration", None) or {}).get("threshold")
    return f"{t:.3g}" if isinstance(t, (int, float)) and not isinstance(t, bool) else "-"


def _compiled(record) -> list:
    from .adapters.compile import list_compiled

    try:
        return list_compiled(record)
    except OSError:
        return []


@adapters.command("list")
@click.option("--all", "show_all", is_flag=True, help="Every version, not only the active ones.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def adapters_list(ctx, show_all, fmt):
    """A table of the adapters (problems found are listed on stderr).

    ``threshold`` is the routing calibration recorded at training; ``compiled`` the weight types the adapter is
    compiled to for the ct2 runtime (``adapters compile``; built on first use otherwise).
    """
    records, problems = _registry(ctx).scan()
    records = records if show_all else [r for r in records if r.active]
    for p in problems:
        click.echo(f"warning: skipped {p.path}: {p.message}", err=True)
    if fmt == "json":
        for r in records:
            d = r.to_dict()
            d["compiled"] = [c.to_dict() for c in _compiled(r)]
            click.echo(json.dumps(d, ensure_ascii=False, default=str))
        return
    head = (
        f"{'name':<22}{'ver':>4} {'act':<4}{'lang':<6}{'domain':<12}{'scope':<17}{'r':>4}{'WER before':>12}"
        f"{'WER after':>11}  {'measured on':<36}{'routing':<10}{'threshold':<10}{'compiled':<14}base"
    )
    click.echo(head)
    for r in records:
        m = r.metrics or {}
        wb, wa = (m.get("before") or {}).get("wer"), (m.get("after") or {}).get("wer")
        fmt_w = lambda x: f"{x:.3f}" if isinstance(x, (int, float)) else "-"  # noqa: E731
        routing = "inactive" if r.inactive_reason else ("auto" if r.active else "-")
        compiled = ",".join(sorted({c.quantization for c in _compiled(r)})) or "-"
        click.echo(
            f"{r.name:<22}{r.version:>4} {'*' if r.active else '':<4}{r.language:<6}{r.domain or '-':<12}"
            f"{r.lora.get('scope', '-'):<17}{str(r.lora.get('r', '-')):>4}{fmt_w(wb):>12}{fmt_w(wa):>11}  "
            f"{r.figures:<36}{routing:<10}{_threshold(r):<10}{compiled:<14}{r.base.get('hub_id')}"
        )
    for r in records:
        if r.inactive_reason:
            click.echo(f"{r.ref} is inactive: {r.inactive_reason}; routing skips it, --adapter {r.name} forces it")
    from .adapters.registry import AdapterMismatchError, check_base

    for r in records:  # listed, but not usable with the configured base: say so
        try:
            check_base(r, _declared_base(ctx))
        except AdapterMismatchError as e:
            click.echo(f"warning: {e}; transcribe and serve skip it with this --base", err=True)


@adapters.command("compile")
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Build again even when a compiled copy exists.")
@click.pass_context
def adapters_compile(ctx, refs, force):
    """Compile NAME[@VERSION] for the ct2 runtime ahead of use: merged into the base in float32, converted by
    CTranslate2 (int8; float32 with --quantize none), kept in the registry beside that version."""
    from .adapters.compile import compile_adapter
    from .base.loading import BaseModelError
    from .transcribe.runtime_ct2 import load_ct2_base

    reg = _registry(ctx)
    records = [_registry_call(reg.get, ref) for ref in refs]
    try:
        b = load_ct2_base(ctx.obj["base"], ctx.obj["quantize"], ctx.obj["device"])
    except BaseModelError as e:
        _fail(str(e).splitlines()[0])
    for rec in records:
        c = _registry_call(
            compile_adapter, rec, b.path, b.identity.to_dict(), b.quantize, tokenizer_from=b.ct2_path, force=force
        )
        how = f"compiled in {c.seconds:.1f} s" if c.built else "already compiled"
        click.echo(f"{rec.ref}\t{c.quantization}\t{how}\t{c.path}")


@adapters.command("show")
@click.argument("ref")
@click.option("--figures", is_flag=True, help="The figures filed with it, as text: held-out WER/CER, routing, time.")
@click.pass_context
def adapters_show(ctx, ref, figures):
    """Everything recorded about NAME[@VERSION] (JSON), or its figures (``--figures``)."""
    rec = _registry_call(_registry(ctx).get, ref)
    if not figures:
        click.echo(json.dumps(rec.to_dict(), indent=2, ensure_ascii=False, default=str))
        return
    for line in _figures(rec):
        click.echo(line)


def _figures(rec) -> list[str]:
    """What ``adapters show --figures`` prints: the record's before/after per held-out set, its filed decoding, its
    routing calibration and the training's time, each line only where the record has it."""
    m = rec.metrics or {}
    lora = rec.lora or {}
    out = [
        f"{rec.ref}: {rec.language}{'/' + rec.domain if rec.domain else ''}, {lora.get('scope', '?')} LoRA r={lora.get('r', '?')}"
    ]
    if m.get("train_clips") is not None:
        out.append(
            f"trained on {m['train_clips']} clips (+{m.get('contrast_clips') or 0} of other languages), "
            f"{m.get('steps', '?')} steps"
        )
    for ev in m.get("evaluations") or []:
        b, a = ev.get("before") or {}, ev.get("after") or {}

        def pair(k, b=b, a=a):
            x, y = b.get(k), a.get(k)
            return f"{x:.3f} -> {y:.3f}" if isinstance(x, (int, float)) and isinstance(y, (int, float)) else "-"

        out.append(
            f"held out ({ev.get('kind')} {ev.get('split')}, {ev.get('n')} clips): WER {pair('wer')}, CER {pair('cer')}"
        )
    if rec.decoding:
        out.append(f"decoding filed: {', '.join(f'{k}={v}' for k, v in rec.decoding.items())}")
    cal = rec.calibration or {}
    if cal:
        own, other = cal.get("own") or {}, cal.get("other") or {}
        out.append(
            f"routing: {cal.get('rule', cal.get('score'))}, threshold {_threshold(rec)}; passes {own.get('accepted')}"
            f"/{own.get('n')} of its own held-out clips and {other.get('accepted')}/{other.get('n')} clips of "
            f"{','.join(cal.get('languages') or []) or 'other languages'}"
        )
    else:
        out.append("routing: uncalibrated (routed where the base detects its language)")
    steps = m.get("step_seconds") or {}
    if steps:
        out.append(f"time: {sum(steps.values()):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()) + ")")
    elif rec.train_seconds:
        out.append(f"time: training {rec.train_seconds:.0f} s")
    if rec.inactive_reason:
        out.append(f"inactive: {rec.inactive_reason}")
    return out


@adapters.command("rm")
@click.argument("ref")
@click.pass_context
def adapters_rm(ctx, ref):
    """Remove NAME (every version) or NAME@VERSION."""
    for r in _registry_call(_registry(ctx).remove, ref):
        click.echo(f"removed {r}")


@adapters.command("activate")
@click.argument("ref")
@click.pass_context
def adapters_activate(ctx, ref):
    """Make NAME@VERSION the active version of NAME."""
    rec = _registry_call(_registry(ctx).activate, ref)
    click.echo(f"{rec.ref} is active")


@adapters.command("import")
@click.argument("src")
@click.option("--name", default=None, help="Registry name (default: from its metadata, or the folder/repo name).")
@click.option("--language", default=None, help="Language, when the adapter does not say.")
@click.option("--domain", default=None)
@click.pass_context
def adapters_import(ctx, src, name, language, domain):
    """File a PEFT adapter folder, or a Hub repo id (as `pull`), in the registry (for the --base in use)."""
    reg = _registry(ctx)
    reg.base = _declared_base(ctx)  # an adapter made for another base is refused, naming both
    if Path(src).is_dir():
        rec = _registry_call(reg.import_folder, src, name=name, language=language, domain=domain)
    else:
        from .adapters.hub import pull as hub_pull

        rec = _registry_call(hub_pull, reg, src, name=name, language=language, domain=domain)
    click.echo(f"imported {rec.ref} ({rec.language}{'/' + rec.domain if rec.domain else ''})")


@adapters.command("export")
@click.argument("ref")
@click.argument("out", type=click.Path(file_okay=False))
@click.pass_context
def adapters_export(ctx, ref, out):
    """Copy NAME[@VERSION] to OUT in the standard PEFT layout (plus lora_whisper.json)."""
    click.echo(str(_registry_call(_registry(ctx).export, ref, out)))


@main.command()
@click.argument("ref")
@click.option("--repo", required=True, help="Hub repo id, user/name.")
@click.option("--private", is_flag=True)
@click.pass_context
def push(ctx, ref, repo, private):
    """Upload an adapter to the Hugging Face Hub (PEFT layout + model card)."""
    from .adapters.hub import push as hub_push

    click.echo(_registry_call(hub_push, _registry(ctx), ref, repo, private=private))


@main.command()
@click.argument("repo")
@click.option("--name", default=None)
@click.option("--language", default=None, help="Language, when the repo does not say.")
@click.option("--domain", default=None)
@click.option("--revision", default=None)
@click.pass_context
def pull(ctx, repo, name, language, domain, revision):
    """Download an adapter from the Hub into the registry (safetensors only, checked)."""
    from .adapters.hub import pull as hub_pull

    reg = _registry(ctx)
    reg.base = _declared_base(ctx)  # an adapter made for another base is refused, naming both
    rec = _registry_call(hub_pull, reg, repo, name=name, language=language, domain=domain, revision=revision)
    click.echo(f"pulled {repo} -> {rec.ref}")


# ---- commands kept in their own modules (one owner each) --------------------------------------------------------
from .batch.command import batch as _batch_command  # noqa: E402
from .serve.command import serve as _serve_command  # noqa: E402

main.add_command(_serve_command, "serve")
main.add_command(_batch_command, "batch")


if __name__ == "__main__":  # pragma: no cover
    main()
