"""Speak recipes/contrast-tts/sentences.txt with espeak-ng into the shipped synthetic contrast and calibration clips.

    python tools/make_tts_contrast.py    # rewrites recipes/contrast-tts/{clips/,manifest.jsonl,calibration.jsonl}

``train`` blocks become contrast clips (``manifest.jsonl``): Arabic, Urdu and Turkish sentences twice, in two training
voices, French, German, Spanish and Portuguese once. ``calibration`` blocks become routing negatives
(``calibration.jsonl``) in four voices used nowhere else (neither training nor the benchmarks' test voices). Voices
are seeded, so the files are reproducible; they are committed so that nobody needs to run this (espeak-ng versions
speak slightly differently).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora_whisper.train.synth import TRAIN_VARIANTS, speak, voices_for  # noqa: E402

OUT = ROOT / "recipes" / "contrast-tts"
CALIBRATION_VARIANTS = ("m5", "f5", "m7", "klatt4")
"""Not in ``TRAIN_VARIANTS`` nor in ``TEST_VARIANTS`` (the benchmarks' synthetic speech)."""
REPEATS = {"ar": 2, "ur": 2, "tr": 2}
"""The languages Persian is confused with are spoken in two voices each; the others once."""


def read_blocks(path: Path) -> dict[tuple[str, str], list[str]]:
    blocks: dict[tuple[str, str], list[str]] = {}
    key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("## "):
            lang, split = line[3:].split()
            key = (lang, split)
            blocks[key] = []
        elif line and not line.startswith("#") and key:
            blocks[key].append(line)
    return blocks


def main() -> None:
    blocks = read_blocks(OUT / "sentences.txt")
    clips = OUT / "clips"
    clips.mkdir(exist_ok=True)
    rows = {"train": [], "calibration": []}
    for (lang, split), sentences in blocks.items():
        if split == "train":
            n = REPEATS.get(lang, 1)
            voices = voices_for(lang, TRAIN_VARIANTS, (130, 190), (30, 70), n * len(sentences), seed=7)
            said = [(s, voices[k * len(sentences) + i]) for k in range(n) for i, s in enumerate(sentences)]
        else:
            voices = voices_for(lang, CALIBRATION_VARIANTS, (140, 180), (35, 65), len(sentences), seed=11)
            said = list(zip(sentences, voices))
        for i, (text, voice) in enumerate(said):
            name = f"clips/{lang}-{split}-{i:03d}.opus"
            audio = speak(text, voice)
            sf.write(OUT / name, audio, 16000, format="OGG", subtype="OPUS")
            rows[split].append(
                {
                    "audio": name,
                    "text": text,
                    "lang": lang,
                    "speaker": f"espeak-{voice.key()}",
                    "duration_s": round(len(audio) / 16000, 2),
                }
            )
    for split, fname in (("train", "manifest.jsonl"), ("calibration", "calibration.jsonl")):
        with open(OUT / fname, "w", encoding="utf-8") as f:
            for r in rows[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{fname}: {len(rows[split])} clips")


if __name__ == "__main__":
    main()
