"""Filing a trained adapter: its files, its record (metrics, filed decoding, routing calibration), its plot, and the
registry entry."""

from __future__ import annotations

import logging
from pathlib import Path

from ..adapters.registry import AdapterRecord, Registry
from ..base.loading import Base
from ..scoring import Score
from .calibration import measure
from .data import Example
from .recipe import Recipe
from .splits import KIND_REAL, Prepared

logger = logging.getLogger("lora_whisper")


def save_adapter_files(peft_model, adapter_dir: Path, base: Base) -> None:
    """The trained LoRA weights and config (safetensors), evaluated and filed from this folder."""
    from ..adapters.lora import save_adapter

    save_adapter(peft_model, adapter_dir, base.identity.hub_id)


def new_record(
    recipe: Recipe, base: Base, trainable: int, data_fp: str, seconds: float, adapter_dir: Path
) -> AdapterRecord:
    """The registry record of the trained adapter, before scoring (version 0: the registry numbers it)."""
    return AdapterRecord(
        name=recipe.name,
        version=0,
        language=recipe.language,
        domain=recipe.domain,
        base=base.identity.to_dict(),
        lora={
            "r": recipe.lora.r,
            "alpha": recipe.lora.alpha,
            "dropout": recipe.lora.dropout,
            "target_modules": list(recipe.lora.target_modules),
            "scope": recipe.lora.scope,
            "trainable_params": trainable,
        },
        recipe=recipe.to_dict(),
        data_fingerprint=data_fp,
        train_seconds=round(seconds, 1),
        source="train",
        decoding=_filed_decoding(recipe.eval),
        path=adapter_dir,
    )


def _filed_decoding(settings) -> dict | None:
    """The record's ``decoding``: what the recipe's eval section says ``transcribe`` should decode this adapter with."""
    out = {"drop_failed": True} if settings.drop_failed else {}
    if settings.beam_size is not None:
        out["beam_size"] = settings.beam_size
    return out or None


def metrics(data: Prepared, befores, afters, best, out, log_history: list[dict], timestamped: int) -> dict:
    """The record's ``metrics``: the headline before/after, every held-out set, and how training went."""
    held = data.held
    before, after = befores[0], afters[0]
    return {
        "before": before.to_dict() if before else None,
        "after": after.to_dict(),
        "kind": held[0].kind,
        "split": held[0].split,
        "held_out": len(held[0].data.examples),
        "evaluations": [
            {
                "kind": h.kind,
                "split": h.split,
                "n": len(h.data.examples),
                "before": b.to_dict() if b else None,
                "after": a.to_dict(),
            }
            for h, b, a in zip(held, befores, afters)
        ],
        "train_clips": len(data.train),
        "contrast_clips": len(data.contrast),
        "train_kind": KIND_REAL if data.held[0].kind == KIND_REAL else "synthetic",
        "timestamped_clips": timestamped,
        "validation": best.summary() if best is not None else None,
        "steps": out.global_step,
        "final_loss": next((h["loss"] for h in reversed(log_history) if "loss" in h), None),
    }


def file_adapter(
    registry: Registry, record: AdapterRecord, recipe: Recipe, adapter_dir: Path, plot: Path
) -> AdapterRecord:
    """File the adapter with its recipe and plot. A version held back as not better than the base does not displace
    an active version that is routable (a warning says which stays active)."""
    record.path = None
    current = next((r for r in registry.list() if r.name == record.name and r.active), None)
    activate = record.inactive_reason is None or current is None or current.inactive_reason is not None
    filed = registry.add(
        adapter_dir,
        record,
        activate=activate,
        extra_files={
            "recipe.yaml": f"# lora-whisper train --recipe recipe.yaml\n{recipe.to_yaml()}",
            "training.png": plot.read_bytes(),
        },
    )
    if record.inactive_reason:
        logger.warning(
            "%s filed INACTIVE: %s; routing will not pick it (force it with --adapter %s)%s",
            filed.ref,
            record.inactive_reason,
            filed.ref,
            "" if activate else f"; {current.ref} stays the active version",
        )
    return filed


def calibrate_routing(engine, record: AdapterRecord, recipe: Recipe, own: list[Example], negatives: list[Example]):
    """The adapter's routing threshold (``routing.calibrate``) from its own clips (validation, else the held-out
    set: the threshold is set by the other languages only, the own clips say how many it lets through) and the
    recipe's real clips of other languages (``negatives``: ``splits.calibration_negatives``, drawn with the data);
    None when the recipe names none."""
    from ..transcribe.routing import calibrate, trained_on_synthetic

    c = recipe.calibration
    if not c.negatives:
        return None
    if not negatives:
        logger.warning("calibration: no clips of other languages in %s; the adapter stays uncalibrated", c.negatives)
        return None
    pos = measure(engine.runtime, record.ref, own, recipe.language)
    neg = measure(engine.runtime, record.ref, negatives, recipe.language)
    cal = calibrate(pos, neg, recipe.language, c.margin, synthetic=trained_on_synthetic(record))
    cal["languages"] = sorted({e.language for e in negatives})
    logger.info(
        "calibration: threshold %.4f accepts %d/%d of its own clips and %d/%d clips of %s",
        cal["threshold"],
        cal["own"]["accepted"],
        cal["own"]["n"],
        cal["other"]["accepted"],
        cal["other"]["n"],
        ",".join(cal["languages"]),
    )
    return cal


def plot_training(log_history: list[dict], before: Score | None, after: Score | None, out: Path, title: str) -> Path:
    """The training plot filed with the adapter: loss per step, and the held-out WER/CER before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in log_history if "loss" in h]
    loss = [h["loss"] for h in log_history if "loss" in h]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    a.plot(steps, loss, marker=".", color="tab:blue")
    a.set_xlabel("optimizer step")
    a.set_ylabel("training loss")
    a.set_title(f"{title}: loss")
    a.grid(alpha=0.3)
    names, vals = [], []
    for name, s in (("base", before), ("adapter", after)):
        if s is not None:
            names += [f"{name}\nWER", f"{name}\nCER"]
            vals += [s.wer, s.cer]
    bars = b.bar(names, vals, color=["tab:gray", "lightgray", "tab:green", "lightgreen"][: len(vals)])
    b.bar_label(bars, fmt="%.3f")
    b.set_title("held-out error (normalized)")
    b.set_ylim(0, max(vals + [0.1]) * 1.2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
