"""Synthetic speech with espeak-ng: a text corpus spoken in many voices, speeds and pitches (the only module that
knows espeak).

Two back-ends, same voices: the ``espeak-ng`` program (Debian package) when it is on PATH, else the library shipped
by the PyPI package ``espeakng-loader``, called through ctypes (there is no maintained Python binding that works with
its bundled data; the calls below are espeak-ng's documented C API from ``speak_lib.h``).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import random
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..transcribe.audio import SAMPLE_RATE, load_audio
from .data import Example

logger = logging.getLogger("lora_whisper")

TRAIN_VARIANTS = ("m1", "m2", "m3", "f1", "f2", "f3", "klatt", "klatt2")
TEST_VARIANTS = ("m4", "f4", "m6", "klatt3")
ESPEAK_VOICE = {"zh": "cmn", "jw": "jv", "haw": "haw"}
"""Whisper language code -> espeak-ng voice where they differ."""


class SynthError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass
class Voice:
    """One way of speaking: espeak voice+variant, words per minute, pitch (0-99)."""

    name: str
    speed: int
    pitch: int

    def key(self) -> str:
        return f"{self.name}-s{self.speed}-p{self.pitch}"


def voices_for(
    language: str, variants: tuple[str, ...], speeds: tuple[int, int], pitches: tuple[int, int], n: int, seed: int
) -> list[Voice]:
    """``n`` voices drawn (seeded) from the variants and the speed/pitch ranges."""
    rng = random.Random(seed)
    base = ESPEAK_VOICE.get(language, language)
    return [
        Voice(f"{base}+{variants[i % len(variants)]}", rng.randint(*speeds), rng.randint(*pitches)) for i in range(n)
    ]


# ---- back-ends -------------------------------------------------------------------------------------------------
def _speak_cli(text: str, voice: Voice) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        proc = subprocess.run(
            ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "-w", f.name, text],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise SynthError(f"espeak-ng -v {voice.name}: {proc.stderr.strip() or proc.returncode}")
        return load_audio(f.name, check_silence=False)


class _Library:
    """espeak-ng's C API through ctypes (synchronous mode, samples collected by a callback)."""

    _lock = threading.Lock()
    _instance: _Library | None = None

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        # espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS=2, buflength ms, path, options)
        self.rate = self.lib.espeak_Initialize(2, 500, ctypes.c_char_p(data), 0)
        if self.rate <= 0:
            raise SynthError("espeak-ng library failed to initialise")
        self.samples: list[np.ndarray] = []
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def callback(wav, n, events):
            if wav and n > 0:
                self.samples.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = cb_type(callback)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._cb)

    @classmethod
    def get(cls) -> _Library:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        import soxr

        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SynthError(f"espeak-ng has no voice {voice.name!r}")
            self.lib.espeak_SetParameter(1, voice.speed, 0)  # espeakRATE
            self.lib.espeak_SetParameter(3, voice.pitch, 0)  # espeakPITCH
            self.samples = []
            buf = text.encode("utf-8") + b"\0"
            # espeak_Synth(text, size, position, POS_CHARACTER=1, end, espeakCHARS_UTF8=1, unique id, user data)
            err = self.lib.espeak_Synth(buf, len(buf), 0, 1, 0, 1, None, None)
            if err != 0:
                raise SynthError(f"espeak-ng synthesis failed ({err}) for voice {voice.name}")
            self.lib.espeak_Synchronize()
            pcm = np.concatenate(self.samples) if self.samples else np.zeros(0, np.int16)
        audio = pcm.astype(np.float32) / 32768.0
        return soxr.resample(audio, self.rate, SAMPLE_RATE).astype(np.float32) if self.rate != SAMPLE_RATE else audio


def backend() -> str:
    """``cli`` when the espeak-ng program is installed, else ``library`` (espeakng-loader)."""
    return "cli" if shutil.which("espeak-ng") else "library"


def speak(text: str, voice: Voice, engine: str | None = None) -> np.ndarray:
    """Speak ``text``; 16 kHz mono float32."""
    engine = engine or backend()
    if engine == "cli":
        return _speak_cli(text, voice)
    try:
        return _Library.get().speak(text, voice)
    except (ImportError, OSError) as e:
        raise SynthError("espeak-ng not found: apt-get install espeak-ng, or pip install espeakng-loader") from e


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(audio**2)) or 1e-8
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), audio.shape).astype(np.float32)
    return (audio + noise).astype(np.float32)


def synthesize(
    sentences: list[str],
    language: str,
    voices: list[Voice],
    cache: Path,
    noise_snr_db: float | None = None,
    seed: int = 0,
    prefix: str = "tts",
    progress=None,
) -> list[Example]:
    """Speak each sentence with a voice (cycled), cached as 16 kHz WAV files keyed by text and voice."""
    import soundfile as sf

    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(sentences):
        voice = voices[i % len(voices)]
        key = hashlib.sha256(f"{text}\0{voice.key()}\0{noise_snr_db}\0{seed}".encode()).hexdigest()[:20]
        path = cache / f"{key}.wav"
        if not path.is_file():
            audio = speak(text, voice)
            if noise_snr_db is not None:  # seeded per clip: the same noise whatever else is already cached
                audio = add_noise(audio, noise_snr_db, np.random.default_rng(int(key, 16)))
            tmp = path.with_suffix(f".{os.getpid()}.tmp.wav")  # data-parallel ranks may speak the same clip
            sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
            tmp.replace(path)
        out.append(Example(f"{prefix}:{i}:{voice.key()}", path, text, language, timed=True))
        if progress:
            progress(1)
    return out


def read_corpus_splits(path: Path) -> dict[str, list[str]]:
    """A corpus text file's splits: ``train``; ``test`` (lines after '# test': held out, same templates as training);
    ``test-out`` (lines after '# test-out': templates and vocabulary never used in training)."""
    splits: dict[str, list[str]] = {"train": [], "test": [], "test-out": []}
    cur = splits["train"]
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.lower() in ("# test", "# test-out"):
            cur = splits[s.lower()[2:]]
            continue
        if s and not s.startswith("#"):
            cur.append(s)
    return splits


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    """(train, in-template held-out) sentences of a corpus file (see ``read_corpus_splits``)."""
    splits = read_corpus_splits(path)
    return splits["train"], splits["test"]


def speech_span(audio: np.ndarray, rel: float = 0.02, step: float = 0.02) -> tuple[float, float]:
    """(start, end) seconds of the speech in a one-utterance clip: first and last 10 ms frame whose peak is above
    ``rel`` of the clip's peak, rounded outwards to Whisper's 20 ms timestamp grid."""
    import math

    frame = SAMPLE_RATE // 100
    n = len(audio) // frame
    if n == 0:
        return 0.0, 0.0
    peaks = np.abs(audio[: n * frame]).reshape(n, frame).max(1)
    voiced = np.flatnonzero(peaks > rel * (peaks.max() or 1.0))
    if voiced.size == 0:
        return 0.0, 0.0
    start = math.floor(voiced[0] * 0.01 / step) * step
    end = math.ceil((voiced[-1] + 1) * 0.01 / step) * step
    return round(start, 2), round(min(end, len(audio) / SAMPLE_RATE, 30.0), 2)


def corpus_path(name: str) -> Path:
    """A shipped corpus by name (``fr-medical``) or a path to a text file."""
    p = Path(name)
    if p.suffix == ".txt" and p.is_file():
        return p
    shipped = Path(__file__).parent / "corpora" / f"{name}.txt"
    if shipped.is_file():
        return shipped
    available = sorted(f.stem for f in (Path(__file__).parent / "corpora").glob("*.txt"))
    raise FileNotFoundError(f"corpus {name!r} not found; shipped corpora: {available}, or give a .txt path")
