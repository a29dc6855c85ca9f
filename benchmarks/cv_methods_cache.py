# ruff: noqa: E402, E701, E702, E741  (the comparison scripts exactly as they were run for docs/training.md)
"""Method comparison on cv-en, step 1: the float32 base's encoder output for every clip (dev first, then train in
manifest order), saved in resumable parts of 40 clips under runs/cv_enc_parts/ (stop it any time; a prefix of the
training rows is a usable subset).

    CV_EN_MANIFEST=/path/to/cv-en/manifest.jsonl THREADS=1 python benchmarks/cv_methods_cache.py --partial

Step 2 is benchmarks/cv_methods.py. Results: docs/training.md, "Choosing the method".
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lora_whisper.base.loading import load_base
from lora_whisper.transcribe.audio import load_audio

root = Path(os.environ["CV_EN_MANIFEST"]).parent
rows = [json.loads(l) for l in (root / "manifest.jsonl").read_text().splitlines() if l.strip()]
rows = [r for r in rows if r["split"] == "dev"] + [
    r for r in rows if r["split"] == "train"
]  # dev first, then train in manifest order
base = load_base("offline", "none", "cpu")
fe = base.processor.feature_extractor
enc = base.model.model.encoder
parts = Path("runs/cv_enc_parts")
parts.mkdir(parents=True, exist_ok=True)
t0 = time.time()
P = 40
for k in range(0, len(rows), P):
    f_out = parts / f"{k:05d}.pt"
    if f_out.exists():
        continue
    outs = []
    for j in range(k, min(k + P, len(rows)), 4):
        chunk = rows[j : j + 4]
        auds = [load_audio(root / r["audio"]) for r in chunk]
        f = fe(auds, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            outs.append(enc(f).last_hidden_state.half())
    torch.save(torch.cat(outs), f_out)
    print(k, time.time() - t0, flush=True)
if "--partial" in sys.argv:
    sys.exit()
H = torch.cat([torch.load(parts / f"{k:05d}.pt") for k in range(0, len(rows), P)])
torch.save({"hidden": H, "rows": rows}, "runs/cv_enc.pt")
print("done", time.time() - t0, H.shape)
