"""The main job, step by step: `lora-whisper train --lang fr --domain medical` into a fresh temporary registry.

    python benchmarks/bench_main_job.py [--cold] [--keep] [--set key=value ...]

Runs the command as a user runs it (its own process, the packaged base, the shipped recipe), then prints the table of
each step's wall time that `train` prints and files in the adapter's record (``metrics["step_seconds"]``), the total
wall time of the command, its peak RSS, and the held-out WER before and after (the job must stay at least 50% below
the base). ``--cold`` also gives it an empty cache folder (base import, espeak synthesis and the base's scores are
then redone, as on a fresh machine); by default the user's cache is used, as a second `make demo` would.
``--set`` passes recipe overrides through (e.g. ``--set train.max_steps=2`` for a quick try of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="an empty cache folder too (LORA_WHISPER_CACHE)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (registry, run, cache)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    a = ap.parse_args()

    root = Path(__file__).resolve().parents[1]  # this checkout's code, here and in the job
    sys.path.insert(0, str(root))
    from lora_whisper.adapters.registry import Registry
    from lora_whisper.train.steps import STEPS, step_table

    tmp = Path(tempfile.mkdtemp(prefix="bench-main-job-"))
    env = dict(os.environ)
    if a.cold:
        env["LORA_WHISPER_CACHE"] = str(tmp / "cache")
    # the `lora-whisper` entry point of this interpreter's checkout (python -m: the code beside this script)
    cmd = [sys.executable, "-m", "lora_whisper.cli", "--registry", str(tmp / "adapters"), "-v", "train"]
    cmd += ["--lang", "fr", "--domain", "medical", "--no-progress", "--set", f"output.run_dir={tmp / 'run'}"]
    for o in a.overrides:
        cmd += ["--set", o]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        sys.exit(f"the job failed (exit {proc.returncode}); its folder: {tmp}")
    rec = Registry(tmp / "adapters").get("fr-medical")
    steps = dict(rec.metrics.get("step_seconds") or {})
    # the filing step writes the record, so it is timed after: read it from the table the command printed
    for line in proc.stdout.splitlines():
        if line.startswith("filing "):
            steps["filing"] = float(line.split()[1])
    print(step_table(steps))
    print(f"\ncommand wall time {wall:.0f} s ({wall / 60:.1f} min); peak RSS {peak_gb:.1f} GB")
    print(f"outside the steps (interpreter start, imports, recipe): {wall - sum(steps.values()):.0f} s")
    b, af = rec.metrics.get("before") or {}, rec.metrics["after"]
    if b:
        print(f"held-out WER {b['wer']:.3f} -> {af['wer']:.3f} ({(af['wer'] - b['wer']) / b['wer']:+.0%} relative)")
    print("\n" + "\n".join(f"  {k:<16}{v}" for k, v in STEPS.items()))
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_gb": round(peak_gb, 2), "steps": steps}))
    if a.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
