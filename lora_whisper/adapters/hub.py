"""Push and pull adapters to and from the Hugging Face Hub (the only module that talks to the Hub).

Pushed repos use the standard PEFT layout (adapter_config.json + adapter_model.safetensors + README.md model card),
so ``PeftModel.from_pretrained(base, "user/name")`` works without lora-whisper. Our metadata travels beside them
(``lora_whisper.json``) so that ``pull`` restores language, domain, metrics and the base fingerprint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from .registry import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    METADATA_FILE,
    PICKLE_SUFFIXES,
    AdapterRecord,
    Registry,
    RegistryError,
)

logger = logging.getLogger("lora_whisper")

UPLOAD_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, METADATA_FILE, "recipe.yaml", "training.png", "README.md")
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.yaml", "*.png"]


class HubError(RuntimeError):
    """A Hub operation failed; one line saying what and how to fix it."""


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (huggingface-cli login)")
    return token


def _routing_section(record: AdapterRecord) -> str:
    """The model card's paragraph on the adapter's routing threshold (empty when it has none)."""
    cal = record.calibration or {}
    return (
        f"""
## Routing (lora-whisper)

When the language is not given, lora-whisper detects it with the base and asks this adapter where the base is
unsure or gives `{record.language}` some weight; the adapter's claim is accepted when
`{_score_text(cal, record.language)} >= {cal.get("threshold")}`. The threshold was measured at
the end of training: just above ({cal.get("margin")}x) the highest score of {cal.get("other", {}).get("n")} clips
of other languages ({", ".join(cal.get("languages") or [])}); it accepts {cal.get("own", {}).get("accepted")} of
{cal.get("own", {}).get("n")} of its own validation clips and {cal.get("other", {}).get("accepted")} of the others.
"""
        if cal.get("threshold") is not None
        else ""
    )


def _decoding_section(record: AdapterRecord) -> str:
    """The card's note on decoding defaults the adapter carries (``decoding`` in lora_whisper.json)."""
    filed = record.decoding or {}
    notes = []
    if filed.get("beam_size"):
        notes.append(
            f"Decoded with beam search of width {filed['beam_size']} (the base's figures: greedy, as `transcribe` "
            "decodes a file no adapter takes); `lora-whisper transcribe --beam-size N` overrides it."
        )
    if filed.get("drop_failed"):
        notes.append(
            "A window that fails Whisper's fallback checks at every temperature (compression ratio above 2.4 or "
            "average log-probability below -1 even at temperature 1.0) is left out of the text, as a no-speech "
            "window is, where Whisper keeps its last try; the figures above were decoded so. `lora-whisper "
            "transcribe --keep-failed` keeps them."
        )
    if not notes:
        return ""
    return "\n## Decoding (lora-whisper)\n\n" + "\n\n".join(notes) + "\n"


def _score_text(cal: dict, language: str) -> str:
    # routing.SCORES in words; adapters/ does not import transcribe/ (imports go one way)
    if cal.get("score") == "own":
        return f"adapter p({language})"
    if cal.get("score") == "odds":
        return f"sqrt(base odds({language}) x adapter odds({language})), odds = p / (1 - p)"
    return f"sqrt(base p({language}) x adapter p({language}))"


def model_card(record: AdapterRecord, repo_id: str) -> str:
    """A model card with the metadata the Hub indexes: library, base, task, language, tags, data sets, WER/CER."""
    lora = record.lora or {}
    body = f"""
# {repo_id.split("/")[-1]}

A LoRA adapter for [{record.base.get("hub_id")}](https://huggingface.co/{record.base.get("hub_id")}): language
`{record.language}`{f", domain `{record.domain}`" if record.domain else ""}. Made with lora-whisper
(version {record.version} of `{record.name}`), LoRA r={lora.get("r")} alpha={lora.get("alpha")} on
{lora.get("target_modules")} ({lora.get("scope")}).

## Use with peft

```python
from peft import PeftModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

base = WhisperForConditionalGeneration.from_pretrained("{record.base.get("hub_id")}")
model = PeftModel.from_pretrained(base, "{repo_id}")
processor = WhisperProcessor.from_pretrained("{record.base.get("hub_id")}")
```

{_evaluation_section(record)}
{_decoding_section(record)}{_routing_section(record)}
Base weights fingerprint: `{record.base.get("fingerprint")}`. Training time: {record.train_seconds or "n/a"} s.
"""
    return f"---\n{_card_data(record, repo_id).to_yaml()}\n---\n{body}"


def _card_data(record: AdapterRecord, repo_id: str):
    """The card's YAML header (``ModelCardData``): the adapter's WER/CER, then the base's on the same clips."""
    from huggingface_hub import EvalResult, ModelCardData

    recipe_data = (record.recipe or {}).get("data", {}) or {}
    datasets = [recipe_data["dataset"]] if recipe_data.get("dataset") else []
    after = (record.metrics or {}).get("after") or {}
    before = (record.metrics or {}).get("before") or {}
    dataset_name = recipe_data.get("dataset") or recipe_data.get("source") or "held-out split"
    # the adapter's figures, then the base's on the same clips (same decoding), so the Hub shows what it changes
    results = [
        EvalResult(
            task_type="automatic-speech-recognition",
            task_name="Speech Recognition",
            dataset_type=recipe_data.get("dataset") or "custom",
            dataset_name=str(dataset_name),
            dataset_split=str((record.metrics or {}).get("split") or "test"),
            metric_type=m,
            metric_name=f"{m.upper()} ({who})",
            metric_value=round(float(side[m]), 4),
        )
        for who, side in (("adapter", after), (f"base {record.base.get('hub_id')}, no adapter", before))
        for m in ("wer", "cer")
        if side.get(m) is not None
    ]
    tags = ["lora", "peft", "whisper", "lora-whisper", record.language] + ([record.domain] if record.domain else [])
    return ModelCardData(
        language=[record.language],
        license="mit",
        library_name="peft",
        base_model=record.base.get("hub_id"),
        pipeline_tag="automatic-speech-recognition",
        tags=tags,
        datasets=datasets or None,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


_KINDS = {
    "real": "real recordings",
    "synthetic-in-template": "synthetic speech (other voices) of sentences from the training templates",
    "synthetic-out-of-template": "synthetic speech (other voices) of sentences from templates and vocabulary "
    "never used in training",
}


def _evaluation_section(record: AdapterRecord) -> str:
    """The card's evaluation table: every held-out set, base and adapter, decoded as ``transcribe`` decodes."""
    metrics = record.metrics or {}
    evaluations = metrics.get("evaluations") or [
        {
            "kind": metrics.get("kind", "held-out"),
            "split": metrics.get("split", "test"),
            "n": metrics.get("held_out"),
            "before": metrics.get("before") or {},
            "after": metrics.get("after") or {},
        }
    ]
    rows = "\n".join(
        f"| {ev.get('kind')} | {ev.get('split')} | {ev.get('n') if ev.get('n') is not None else '-'} | {m.upper()} | "
        f"{(ev.get('before') or {}).get(m, float('nan')):.3f} | {(ev.get('after') or {}).get(m, float('nan')):.3f} |"
        for ev in evaluations
        for m in ("wer", "cer")
        if m in (ev.get("after") or {})
    )
    legend = "\n".join(f"- `{k}`: {v}" for k, v in _KINDS.items() if any(ev.get("kind") == k for ev in evaluations))
    warning = (
        f"\n**Inactive**: {record.inactive_reason}. lora-whisper's routing does not pick this adapter.\n"
        if record.inactive_reason
        else ""
    )
    return f"""## Evaluation (held-out sets, normalized text)

Decoded as `lora-whisper transcribe --language {record.language}` decodes (temperature fallback, compression-ratio and
log-probability checks), base and adapter on the same clips; Whisper's text normalizer.
{warning}
| data | split | clips | metric | base | adapter |
|---|---|---|---|---|---|
{rows}

{legend}"""


def push(registry: Registry, ref: str, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Upload one adapter version to ``repo_id``; returns the commit URL."""
    token = _token()
    from huggingface_hub import HfApi

    record = registry.get(ref)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        for name in UPLOAD_FILES:
            if (record.path / name).is_file():
                shutil.copy2(record.path / name, Path(tmp) / name)
        (Path(tmp) / "README.md").write_text(model_card(record, repo_id), encoding="utf-8")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                folder_path=tmp,
                repo_id=repo_id,
                repo_type="model",
                revision=revision,
                commit_message=f"Upload {record.ref} ({record.language}{'/' + record.domain if record.domain else ''})",
            )
        except Exception as e:  # noqa: BLE001 - hub client errors: one line for the user
            raise HubError(f"push {record.ref} -> {repo_id}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return str(getattr(info, "commit_url", info))


def pull(
    registry: Registry,
    repo_id: str,
    name: str | None = None,
    language: str | None = None,
    domain: str | None = None,
    revision: str | None = None,
) -> AdapterRecord:
    """Download an adapter repo (safetensors only) and file it in the registry after the usual checks."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise HubError(f"pull {repo_id}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if ADAPTER_WEIGHTS not in files:
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        why = f" (found pickled {', '.join(pickles)}: not accepted)" if pickles else ""
        raise HubError(f"pull {repo_id}: no {ADAPTER_WEIGHTS} in the repo{why}")
    if ADAPTER_CONFIG not in files:
        raise HubError(f"pull {repo_id}: no {ADAPTER_CONFIG} in the repo")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS, local_dir=tmp)
        except Exception as e:  # noqa: BLE001
            raise HubError(f"pull {repo_id}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        local = Path(local)
        shutil.rmtree(local / ".cache", ignore_errors=True)
        default_name = repo_id.split("/")[-1].lower()
        try:
            return registry.import_folder(
                local,
                # our metadata names the adapter; a plain peft repo is named after the repo
                name=name or (None if (local / METADATA_FILE).is_file() else default_name),
                language=language,
                domain=domain,
                source=f"hf://{repo_id}",
            )
        except RegistryError as e:
            raise HubError(f"pull {repo_id}: {e}") from e
