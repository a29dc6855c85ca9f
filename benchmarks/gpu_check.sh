#!/usr/bin/env bash
# GPU check for lora-whisper: run as is on a machine with an NVIDIA GPU (from the repository root):
#   bash benchmarks/gpu_check.sh            # PYTHON=... to pick the interpreter, STEPS=20 by default
# Prints what it measured:
#   1. placement: the device each rank picks under torchrun (LOCAL_RANK), for every visible GPU
#   2. 8-bit training steps (bitsandbytes base + LoRA encoder+decoder, fp32/fp16/bf16): seconds per step and peak
#      GPU memory, against a float32 base
#   3. data-parallel training with torchrun on all GPUs (when there are 2+): each rank's device and step time
#   4. transcription speed on the real clips in tests/data/audio: lora-whisper (float32 and 8-bit) against
#      faster-whisper (CTranslate2 float16 and int8_float16) on CUDA, same weights, ratios in one process
# Nothing here runs on CPU-only machines (it stops at step 0 and says so). Not run in CI.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-20}

echo "== 0. GPU"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: this script measures GPU behaviour only")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
print("torch", torch.__version__)
PYEOF

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

echo "== 1. placement (the device each torchrun rank loads the base on)"
"$PY" - <<PYEOF
from lora_whisper.base.loading import pick_device
n = $NGPU
for rank in range(n):
    print(f"LOCAL_RANK={rank} -> {pick_device(None, {'LOCAL_RANK': str(rank)}, n)}")
PYEOF

echo "== 2. training steps on one GPU (batch 8, LoRA r=32 q/v encoder+decoder, $STEPS steps after 3 warm-up)"
"$PY" - <<PYEOF
import json, time, torch
from pathlib import Path
from lora_whisper.transcribe.audio import load_audio
from lora_whisper.base.loading import load_base
from lora_whisper.adapters.lora import lora_config
from peft import get_peft_model, prepare_model_for_kbit_training

rows = [json.loads(l) for l in Path("tests/data/audio/manifest.jsonl").read_text().splitlines() if l.strip()]
audio = [load_audio(Path("tests/data/audio") / r["audio"]) for r in rows][:8]
texts = [r["text"] for r in rows][:8]
results = {}
for quantize, precision in (("none", "fp32"), ("int8", "fp32"), ("int8", "fp16"), ("int8", "bf16")):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        continue
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = load_base("offline", quantize, "cuda")
    model = base.model
    if quantize == "int8":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config("encoder+decoder", 32, 64, 0.05, ("q_proj", "v_proj")))
    tok = base.processor.tokenizer
    tok.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    feats = base.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features.to("cuda")
    ids = [tok(t).input_ids[1:] for t in texts]
    labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
    for i, x in enumerate(ids):
        labels[i, : len(x)] = torch.tensor(x)
    labels = labels.to("cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(input_features=feats, labels=labels).loss
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad()
        return loss.item()
    for _ in range(3):
        first = step()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range($STEPS):
        last = step()
    torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / $STEPS
    mem = torch.cuda.max_memory_allocated() / 2**20
    results[(quantize, precision)] = sec
    print(f"base {quantize:<5} {precision}: {sec:.3f} s/step, peak {mem:.0f} MiB, loss {first:.3f} -> {last:.3f}")
    del model, base, opt; torch.cuda.empty_cache()
ref = results[("none", "fp32")]
for k, v in results.items():
    print(f"  ratio to float32 base fp32: {k[0]} {k[1]} {v / ref:.2f}x")
PYEOF

if [ "$NGPU" -ge 2 ]; then
  echo "== 3. data-parallel training on $NGPU GPUs (torchrun; each rank must report its own cuda:N)"
  TMP=$(mktemp -d)
  "$PY" -m torch.distributed.run --nproc_per_node="$NGPU" -m lora_whisper.cli --registry "$TMP/adapters" -v \
    train --lang fr --domain medical --no-progress --set train.max_steps=$STEPS --set data.max_train=$((16 * NGPU)) \
    --set data.max_test=8 --set data.max_test_out=8 --set train.precision=fp16 --set "output.run_dir=$TMP/run" \
    2>&1 | grep -E "device|WER|steps|error|Error" || true
  "$PY" - <<PYEOF
import json, glob
for f in sorted(glob.glob("$TMP/run/checkpoint-*/trainer_state.json"))[-1:]:
    s = json.load(open(f)); print("global steps", s["global_step"], "train runtime (s):", [h.get("train_runtime") for h in s["log_history"] if "train_runtime" in h])
PYEOF
else
  echo "== 3. skipped: one GPU (data-parallel needs 2+)"
fi

echo "== 4. transcription speed on CUDA: lora-whisper vs faster-whisper (same whisper-base weights, greedy)"
"$PY" - <<'PYEOF'
import time, glob, torch
from lora_whisper.transcribe.audio import load_audio
from lora_whisper.base.loading import load_base, offline_ct2_path
from lora_whisper.transcribe.engine import Engine, TranscribeOptions
files = sorted(glob.glob("tests/data/audio/*.wav"))
audio = [(f, load_audio(f)) for f in files]
seconds = sum(len(a) for _, a in audio) / 16000
def timed(fn, repeat=3):
    fn(); best = 1e9
    for _ in range(repeat):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); best = min(best, time.perf_counter() - t0)
    return best
res = {}
for quantize in ("none", "int8"):
    eng = Engine(load_base("offline", quantize, "cuda"))
    res[f"lora-whisper {quantize}"] = timed(lambda: list(eng.transcribe(audio, TranscribeOptions(batch_size=16))))
    del eng; torch.cuda.empty_cache()
from faster_whisper import WhisperModel
for ct in ("float16", "int8_float16"):
    fw = WhisperModel(str(offline_ct2_path()), device="cuda", compute_type=ct)
    res[f"faster-whisper {ct}"] = timed(lambda: [" ".join(s.text for s in fw.transcribe(a, beam_size=1)[0]) for _, a in audio])
ref = res["faster-whisper float16"]
print(f"{len(files)} files, {seconds:.0f} s of audio")
for k, v in res.items():
    print(f"{k:<30}{v:8.2f} s  {seconds / v:7.1f}x real time  {v / ref:5.2f}x faster-whisper float16")
PYEOF
