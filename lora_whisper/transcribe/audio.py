"""Audio decoding, resampling and chunking (soundfile + soxr; no FFmpeg needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30.0
MIN_SECONDS = 0.1
SILENCE_PEAK = 1e-3
"""Peak amplitude under which a clip counts as silent (about -60 dBFS)."""
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au")


class AudioError(ValueError):
    """An input file could not be used; the message names the file."""


class AudioTooLong(AudioError):
    """An input holds more audio than the caller's ``max_seconds`` (found while decoding, which then stops)."""


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    return path


def load_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, check_silence: bool = True, max_seconds: float | None = None
) -> np.ndarray:
    """Decode a file to mono float32 at ``sample_rate``.

    ``max_seconds``: decode block by block (mixed down and resampled as it goes, the same samples as a whole read)
    and stop as soon as the audio is longer: a small compressed file can hold hours (2 h of silent Opus in 2.7 MB),
    and memory stays bounded by the limit, not by what the file claims or holds.

    Raises:
        AudioTooLong: more than ``max_seconds`` of audio.
        AudioError: one line naming the file: missing, empty, undecodable, too short, or silent.
    """
    import soundfile as sf
    import soxr

    path = _check_file(path)
    if max_seconds is not None:
        audio = _read_bounded(path, sample_rate, max_seconds)
    else:
        try:
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - libsndfile raises several types; report one line
            raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from e
        if audio.shape[0] == 0:
            raise AudioError(f"{path}: no audio samples (truncated?)")
        audio = audio.mean(axis=1)
        if sr != sample_rate:
            audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
    if len(audio) < MIN_SECONDS * sample_rate:
        raise AudioError(f"{path}: only {len(audio) / sample_rate:.3f} s of audio (truncated?)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if check_silence and float(np.abs(audio).max()) < SILENCE_PEAK:
        raise AudioError(f"{path}: silent audio (peak below {SILENCE_PEAK}), nothing to transcribe")
    return audio


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _claimed_seconds(f) -> float:
    """The length an open SoundFile's header claims (0: unknown); decoding is bounded whatever it claims."""
    return f.frames / f.samplerate if 0 < f.frames < 1 << 62 else 0.0


def _read_bounded(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 at ``sample_rate``, decoded in blocks of about 4 MB; AudioTooLong past ``max_seconds``."""
    import soundfile as sf
    import soxr

    def too_long(seconds: float, how: str) -> AudioTooLong:
        return AudioTooLong(f"{path}: {how} {seconds:.0f} s of audio, over the limit of {max_seconds:g} s")

    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # noqa: BLE001
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from e
    with f:
        sr = f.samplerate
        if sr <= 0:
            raise AudioError(f"{path}: cannot decode audio (sample rate {sr})")
        if _claimed_seconds(f) > max_seconds:  # the header says so: refused unread
            raise too_long(_claimed_seconds(f), "holds")
        limit = int(max_seconds * sr)
        rs = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32") if sr != sample_rate else None
        out, frames, block = [], 0, max(1024, (1 << 20) // max(1, f.channels))  # about 4 MB of float32 a read
        while True:
            try:
                x = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001
                raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from e
            frames += len(x)
            if frames > limit:
                raise too_long(frames / sr, "more than")
            last = len(x) < block
            x = x.mean(axis=1) if len(x) else np.zeros(0, np.float32)
            y = rs.resample_chunk(x, last=last) if rs is not None else x
            if len(y):
                out.append(np.asarray(y, dtype=np.float32))
            if last:
                break
    if frames == 0:
        raise AudioError(f"{path}: no audio samples (truncated?)")
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class Chunk:
    """A window of at most 30 s of one file's audio."""

    index: int
    start: float
    end: float
    audio: np.ndarray


def chunk_audio(audio: np.ndarray, seconds: float = CHUNK_SECONDS, sample_rate: int = SAMPLE_RATE) -> list[Chunk]:
    """Split audio into consecutive windows of ``seconds`` (Whisper's receptive field); a tail under 0.2 s is dropped."""
    n = int(seconds * sample_rate)
    chunks = []
    for i, start in enumerate(range(0, max(len(audio), 1), n)):
        piece = audio[start : start + n]
        chunks.append(Chunk(i, start / sample_rate, (start + len(piece)) / sample_rate, piece))
    if len(chunks) > 1 and len(chunks[-1].audio) < 0.2 * sample_rate:
        chunks.pop()  # a sliver under 0.2 s holds no word; Whisper would hallucinate on it
    return chunks


def expand_inputs(paths: list) -> list:
    """Expand folders into the audio files they hold (sorted); files are kept as given, missing ones too.

    Items that are already decoded, ``(name, samples)`` pairs, pass through.
    """
    out: list = []
    for p in paths:
        if isinstance(p, tuple):
            out.append(p)
            continue
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()))
        else:
            out.append(p)
    return out


def audio_info(path: str | Path) -> float:
    """Duration in seconds without decoding the file (the same checks and one-line errors as load_audio)."""
    import soundfile as sf

    path = _check_file(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types; report one line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AudioError(f"{path}: cannot decode audio ({reason})") from e
    return info.frames / info.samplerate if info.samplerate else 0.0


def stream_audio(path: str | Path, block_seconds: float, sample_rate: int = SAMPLE_RATE):
    """Yield (offset_seconds, samples) blocks of at most ``block_seconds`` of mono float32 audio at ``sample_rate``.

    The file is read and resampled incrementally (soundfile blocks + soxr's streaming resampler), so memory stays
    bounded by the block size whatever the file's length.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    audio_info(path)  # same errors as load_audio for missing/empty/undecodable files
    n_out = int(block_seconds * sample_rate)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # noqa: BLE001
        raise AudioError(f"{path}: cannot decode audio ({str(e).splitlines()[0]})") from e
    with f:
        rs = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32") if f.samplerate != sample_rate else None
        buf: list[np.ndarray] = []
        have, offset, peak, total = 0, 0, 0.0, 0
        read = max(1, int(f.samplerate * 10))
        while True:
            try:
                x = f.read(read, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001
                raise AudioError(f"{path}: cannot decode audio ({str(e).splitlines()[0]})") from e
            last = len(x) < read
            x = x.mean(axis=1) if len(x) else np.zeros(0, np.float32)
            y = rs.resample_chunk(x, last=last) if rs is not None else x
            y = np.ascontiguousarray(y, dtype=np.float32)
            if len(y):
                if not np.isfinite(y).all():
                    raise AudioError(f"{path}: audio contains NaN or infinite samples")
                peak = max(peak, float(np.abs(y).max()))
                buf.append(y)
                have += len(y)
            while have >= n_out or (last and have):
                block = np.concatenate(buf)
                out, rest = block[:n_out], block[n_out:]
                buf, have = ([rest] if len(rest) else []), len(rest)
                total += len(out)
                yield offset / sample_rate, out
                offset += len(out)
            if last:
                break
    if total < MIN_SECONDS * sample_rate:
        raise AudioError(f"{path}: only {total / sample_rate:.3f} s of audio (truncated?)")
