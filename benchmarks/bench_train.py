"""Training step time and peak memory on CPU, batch 8, whisper-base (packaged), synthetic French medical speech.

    python benchmarks/bench_train.py [--steps 3] [--threads 2]

Configurations, each in its own process so that peak memory (max RSS) is its own:
  full-ft-fp32     all weights trainable, float32 (the reference: the classic full fine-tune)
  lora-fp32        float32 frozen base + LoRA r=32 on q_proj,v_proj of encoder and decoder
  lora-8bit        8-bit frozen base (bitsandbytes) + the same LoRA
  lora-8bit-gc     the same with gradient checkpointing
  dec-8bit-cached  8-bit base, decoder-only LoRA trained on cached encoder output (cache cost reported apart)
Step = forward + backward + AdamW step, through the same dataset/collator/LoRA code as `lora-whisper train`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = ["full-ft-fp32", "lora-fp32", "lora-8bit", "lora-8bit-gc", "dec-8bit-cached"]


def one(config: str, steps: int, threads: int) -> dict:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    from lora_whisper.adapters.lora import lora_config
    from lora_whisper.base.loading import load_base, quiet_libraries
    from lora_whisper.train.data import validate
    from lora_whisper.train.recipe import find_recipe, load_recipe
    from lora_whisper.train.trainer import _Collator, _dataset, load_data

    quiet_libraries()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    recipe = load_recipe(find_recipe("fr", "medical"), ["data.max_train=8", "data.max_test=1"])
    quantize = "int8" if "8bit" in config else "none"
    base = load_base("offline", quantize=quantize, device="cpu")
    train, _ = load_data(recipe)
    examples = validate(train, base.processor.tokenizer).examples[:8]
    cache_s = None
    hidden = None
    if config == "dec-8bit-cached":
        t = time.perf_counter()
        feats = base.processor.feature_extractor([e.audio for e in examples], sampling_rate=16000, return_tensors="pt")
        with torch.inference_mode():
            hidden = base.model.model.encoder(feats.input_features).last_hidden_state.to(torch.float16)
        cache_s = (time.perf_counter() - t) / len(examples)
    model = base.model
    if config == "full-ft-fp32":
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
    else:
        if quantize == "int8":
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=config.endswith("-gc"),
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        scope = "decoder" if config.startswith("dec") else "encoder+decoder"
        model = get_peft_model(model, lora_config(scope, 32, 64, 0.05))
        if config.endswith("-gc"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    ds = _dataset(base, examples, "fr", hidden)
    batch = _Collator(base.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>"))(
        [ds[i] for i in range(len(ds))]
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {
        "config": config,
        "step_s": sum(times[1:]) / steps,
        "first_step_s": times[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": sum(p.numel() for p in params),
        "cache_s_per_clip": cache_s,
        "loss": float(loss),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", choices=CONFIGS)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.threads)))
        return
    res = []
    for c in args.configs.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--one", c, "--steps", str(args.steps), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{c}: failed\n{out.stderr[-1500:]}", file=sys.stderr)
            continue
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured {c}: {res[-1]['step_s']:.2f} s/step", file=sys.stderr)
    ref = next((r for r in res if r["config"] == "full-ft-fp32"), res[0])
    print(f"batch 8 x 30 s windows, {args.steps} timed steps after one warm-up, {args.threads} threads")
    print(f"{'config':<18}{'trainable':>12}{'s/step':>9}{'x full-ft':>11}{'peak RSS MB':>13}{'x full-ft':>11}")
    for r in res:
        print(
            f"{r['config']:<18}{r['trainable']:>12,}{r['step_s']:>9.2f}{r['step_s'] / ref['step_s']:>11.2f}"
            f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / ref['peak_rss_mb']:>11.2f}"
        )
    for r in res:
        if r["cache_s_per_clip"]:
            print(f"{r['config']}: encoder cache {r['cache_s_per_clip']:.2f} s per clip, once")


if __name__ == "__main__":
    main()
