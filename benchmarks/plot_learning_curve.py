"""Learning curve from registry records: held-out WER/CER against the number of training clips.

    # the recipe on 250, 500 and 1,000 clips (same validation speaker, same dev), then on all of them
    for n in 250 500 1000; do lora-whisper --registry lc train --recipe recipes/fa-commonvoice.yaml \\
        --set data.max_train=$n --set output.name=fa-lc-$n --set 'calibration.negatives=[]'; done
    python benchmarks/plot_learning_curve.py --registry lc --registry adapters --names fa-lc-,fa-commonvoice \\
        --out docs/fa-learning-curve.png

Prints a table (clips, steps, training seconds, dev WER/CER base -> adapter; each name's latest version) and writes the plot. The figures are
the ones `train` filed (decoded as `transcribe` decodes); nothing is re-measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", action="append", required=True, help="registry folder (repeatable)")
    ap.add_argument("--names", required=True, help="comma list of adapter names or name prefixes")
    ap.add_argument("--out", default="learning-curve.png")
    ap.add_argument("--title", default="Persian adapter: dev (speakers never heard) against training clips")
    args = ap.parse_args()

    from lora_whisper.adapters.registry import Registry

    prefixes = [p for p in args.names.split(",") if p]
    rows = []
    for folder in args.registry:
        newest = {}  # each name's latest version: a rerun with a changed recipe replaces its point
        for rec in Registry(folder).list():
            if any(rec.name.startswith(p) for p in prefixes) and rec.version >= getattr(
                newest.get(rec.name), "version", 0
            ):
                newest[rec.name] = rec
        for rec in newest.values():
            m = rec.metrics or {}
            if not m.get("after") or not m.get("before"):
                continue
            rows.append((m["train_clips"], m.get("steps"), rec.train_seconds, m["before"], m["after"], rec.ref))
    if not rows:
        sys.exit("no matching records with before/after figures")
    rows.sort(key=lambda r: r[0])
    print(f"{'training clips':>15}{'steps':>7}{'train s':>9}{'dev WER':>16}{'dev CER':>16}  adapter")
    for n, steps, sec, b, a, ref in rows:
        print(
            f"{n:>15}{steps or 0:>7}{sec or 0:>9.0f}{b['wer']:>8.3f} -> {a['wer']:.3f}{b['cer']:>8.3f} -> {a['cer']:.3f}"
            f"  {ref}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(xs, [r[4]["wer"] for r in rows], marker="o", color="tab:blue", label="adapter WER")
    ax.plot(xs, [r[4]["cer"] for r in rows], marker="s", color="tab:green", label="adapter CER")
    ax.axhline(rows[0][3]["wer"], color="tab:blue", ls="--", alpha=0.6, label=f"base WER {rows[0][3]['wer']:.3f}")
    ax.axhline(rows[0][3]["cer"], color="tab:green", ls="--", alpha=0.6, label=f"base CER {rows[0][3]['cer']:.3f}")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r[4]['wer']:.2f}", (x, r[4]["wer"]), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("training clips (log scale)")
    ax.set_ylabel("error rate (normalized)")
    ax.set_title(args.title, fontsize=10)
    ax.set_ylim(0, max(1.15, max(r[3]["wer"] for r in rows) * 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
