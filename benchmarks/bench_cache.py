"""Three languages, three adapters, ``--cache-size 1``: routed files evict each other's compiled models.

    python benchmarks/bench_cache.py --registry adapters --name fa-commonvoice --fa-manifest FA.jsonl --en-manifest EN.jsonl

Persian clips are dev clips the base detects as Persian. Builds a temporary registry with a copy of a real Persian adapter (uncompiled) and two random LoRA adapters on the base for French and
English (r=32, encoder+decoder q/v, no domain), compiles nothing ahead, and runs the real CLI:
``lora-whisper --registry R --cache-size 1 transcribe --format json`` over Persian, French and English files in
turn, language detected. Prints the adapter each file was routed to, how many compiled-model loads the run needed
(every change of adapter with one resident model), the wall seconds, and the exit code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_adapter(reg, name: str, lang: str, base, seed: int) -> None:
    import torch
    from peft import get_peft_model

    from lora_whisper.adapters.lora import lora_config, save_adapter
    from lora_whisper.adapters.registry import AdapterRecord
    from lora_whisper.base.loading import load_model

    torch.manual_seed(seed)
    pm = get_peft_model(load_model(base.path, "none", "cpu"), lora_config("encoder+decoder", r=32, alpha=64))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.002)
    tmp = Path(tempfile.mkdtemp())
    save_adapter(pm, tmp, base.identity.hub_id)
    rec = AdapterRecord(
        name=name,
        version=0,
        language=lang,
        base=base.identity.to_dict(),
        lora={"r": 32, "alpha": 64, "scope": "encoder+decoder"},
        source="bench",
    )
    reg.add(tmp, rec)
    shutil.rmtree(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", type=Path, required=True, help="the registry holding the Persian adapter")
    ap.add_argument("--name", default="fa-commonvoice")
    ap.add_argument("--fa-manifest", type=Path, required=True, help="Persian manifest: dev rows are used")
    ap.add_argument("--en-manifest", type=Path, required=True, help="English manifest: dev rows are used")
    ap.add_argument("--per-language", type=int, default=3)
    a = ap.parse_args()

    from lora_whisper.adapters.registry import Registry
    from lora_whisper.transcribe.runtime_ct2 import load_ct2_base

    base = load_ct2_base("offline", "auto", "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    reg = Registry(tmp / "adapters")
    shutil.copytree(a.registry / a.name, reg.root / a.name, ignore=shutil.ignore_patterns(".compiled"))
    random_adapter(reg, "fr-random", "fr", base, 1)
    random_adapter(reg, "en-random", "en", base, 2)

    audio = ROOT / "tests" / "data" / "audio"
    real = [json.loads(x) for x in (audio / "manifest.jsonl").read_text().splitlines() if x.strip()]
    fa, en = (
        [m.parent / r["audio"] for r in map(json.loads, m.read_text().splitlines()) if r.get("split") == "dev"]
        for m in (a.fa_manifest, a.en_manifest)
    )
    fr = [audio / r["audio"] for r in real if r["lang"] == "fr"]
    # Persian clips the base itself detects as Persian: this measures the cache, not routing (bench_fa.py does that)
    from faster_whisper import WhisperModel

    from lora_whisper.transcribe.audio import load_audio

    lid = WhisperModel(str(base.ct2_path), device="cpu", compute_type="int8")
    fa = [f for f in fa[:40] if lid.detect_language(load_audio(f)[: 30 * 16000])[0] == "fa"]
    fa, fr, en = fa[: a.per_language], fr[: a.per_language], en[: a.per_language]
    files = [f for trio in zip(fa, fr, en) for f in trio]
    cmd = [
        sys.executable,
        "-m",
        "lora_whisper.cli",
        "--registry",
        str(reg.root),
        "--cache-size",
        "1",
        "--runtime",
        "ct2",
        "transcribe",
        "--format",
        "json",
        *map(str, files),
    ]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    print("| file | language | adapter |\n|---|---|---|")
    for r in rows:
        print(f"| {Path(r['file']).name} | {r['language']} | {r['adapter']} |")
    adapters = [r["adapter"] for r in rows]
    loads = sum(1 for i, x in enumerate(adapters) if x and (i == 0 or adapters[i - 1] != x))
    print(
        f"\n{len(rows)}/{len(files)} files transcribed, exit {res.returncode}, {wall:.1f} s wall "
        f"(compiles included), {len(set(x for x in adapters if x))} adapters used, "
        f"at least {loads} compiled-model loads with --cache-size 1"
    )
    if res.returncode:
        print(res.stderr[-2000:], file=sys.stderr)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
