# ruff: noqa: E402, E701, E702, E741  (the comparison scripts exactly as they were run for docs/training.md)
"""Method comparison on cv-en, step 2: decoder-only LoRA on the cached encoder outputs of cv_methods_cache.py.

    CV_EN_MANIFEST=/path/to/manifest.jsonl python benchmarks/cv_methods.py base 16 1e-4 1 q_proj,v_proj 0 0 --base
    CV_EN_MANIFEST=/path/to/manifest.jsonl python benchmarks/cv_methods.py A 32 1e-3 3     # NAME r lr epochs
        [modules] [timemask: fraction of encoder frames masked, SpecAugment-style] [ntrain: subsample]

The first NTRAIN_ROWS (440) training rows are split exactly as `lora-whisper train` splits them
(data.hold_out_speakers, 80 clips, seed 0); the checkpoint with the best validation WER is scored on all dev clips
(plain greedy generate on the cached encoder output, <|notimestamps|>). Prints RESULT {json} and appends it to
runs/exp_results.jsonl.
"""

import json
import math
import random
import sys
import time

import torch

torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from peft import get_peft_model
from transformers.modeling_outputs import BaseModelOutput

from lora_whisper.adapters.lora import lora_config
from lora_whisper.base.loading import load_base
from lora_whisper.scoring import score

name, r, lr, epochs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
modules = sys.argv[5].split(",") if len(sys.argv) > 5 else ["q_proj", "v_proj"]
timemask = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
ntrain = int(sys.argv[7]) if len(sys.argv) > 7 else 0
torch.manual_seed(0)
random.seed(0)
from pathlib import Path

root = Path(__import__("os").environ["CV_EN_MANIFEST"]).parent
rows = [json.loads(l) for l in (root / "manifest.jsonl").read_text().splitlines() if l.strip()]
rows = [r for r in rows if r["split"] == "dev"] + [r for r in rows if r["split"] == "train"]
parts = []
for k in range(0, len(rows), 40):
    f = Path(f"runs/cv_enc_parts/{k:05d}.pt")
    if not f.exists():
        break
    parts.append(torch.load(f))
H = torch.cat(parts)
rows = rows[: len(H)]
train_idx = [i for i, r_ in enumerate(rows) if r_["split"] == "train"]
dev_idx = [i for i, r_ in enumerate(rows) if r_["split"] == "dev"]
# validation: train speakers held out, exactly as train.py does it (data.hold_out_speakers, n=80, seed 0)
from lora_whisper.train.data import Example, hold_out_speakers

NTRAIN_ROWS = int(__import__("os").environ.get("NTRAIN_ROWS", "440"))
train_idx = train_idx[:NTRAIN_ROWS]
exs = [Example(str(i), "x", rows[i]["text"], "en", rows[i]["speaker"]) for i in train_idx]
tr_ex, val_ex = hold_out_speakers(exs, 80, 0)
tr_idx = [int(e.id) for e in tr_ex]
val_idx = [int(e.id) for e in val_ex]
vs = {e.speaker for e in val_ex}
rng = random.Random(0)
if ntrain:
    tr_idx = rng.sample(tr_idx, ntrain)
print(f"train {len(tr_idx)} val {len(val_idx)} ({len(vs)} spk) dev {len(dev_idx)}", flush=True)

base = load_base("offline", "none", "cpu")
tok = base.processor.tokenizer
tok.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
labels = {i: tok(rows[i]["text"]).input_ids[1:] for i in tr_idx}
model = get_peft_model(base.model, lora_config("decoder", r, 2 * r, 0.05, tuple(modules)))
model.print_trainable_parameters()


def evaluate(idx, bs=16):
    model.eval()
    hyps = []
    with torch.inference_mode():
        for k in range(0, len(idx), bs):
            b = idx[k : k + bs]
            out = model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=H[b].float()),
                language="en",
                task="transcribe",
                max_new_tokens=120,
            )
            hyps += [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    return score([rows[i]["text"] for i in idx], hyps, "en").wer, hyps


if "--base" in sys.argv:
    with model.disable_adapter():
        print("BASE val", evaluate(val_idx)[0], "dev", evaluate(dev_idx)[0], flush=True)
    sys.exit()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
bs = 8
steps_per_epoch = math.ceil(len(tr_idx) / bs)
total = int(steps_per_epoch * epochs)
warm = max(1, total // 20)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
)
step, t0, best = 0, time.time(), (9, None, -1)
evals_per_epoch = 2 if epochs <= 3 else 1
eval_every = max(1, steps_per_epoch // evals_per_epoch)
while step < total:
    perm = tr_idx[:]
    rng.shuffle(perm)
    for k in range(0, len(perm), bs):
        if step >= total:
            break
        model.train()
        b = perm[k : k + bs]
        h = H[b].float()
        if timemask > 0:  # mask spans of encoder frames (SpecAugment-style time masking on the cached output)
            for j in range(len(b)):
                for _ in range(int(timemask * 1500 / 10)):
                    s0 = random.randrange(0, 1490)
                    h[j, s0 : s0 + 10] = 0
        w = max(len(labels[i]) for i in b)
        lab = torch.full((len(b), w), -100, dtype=torch.long)
        for j, i in enumerate(b):
            lab[j, : len(labels[i])] = torch.tensor(labels[i])
        loss = model(encoder_outputs=(h,), labels=lab).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        if step % 20 == 0:
            print(f"step {step}/{total} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        if step % eval_every == 0 or step == total:
            v, _ = evaluate(val_idx)
            print(f"step {step} val WER {v:.4f} {time.time() - t0:.0f}s", flush=True)
            if v < best[0]:
                best = (v, {k_: t.detach().clone() for k_, t in model.state_dict().items() if "lora_" in k_}, step)
model.load_state_dict(best[1], strict=False)
dv, hyps = evaluate(dev_idx)
res = dict(
    name=name,
    r=r,
    lr=lr,
    epochs=epochs,
    modules=modules,
    timemask=timemask,
    ntrain=len(tr_idx),
    best_step=best[2],
    total=total,
    val=best[0],
    dev=dv,
    secs=time.time() - t0,
)
print("RESULT", json.dumps(res), flush=True)
with open("runs/exp_results.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")
