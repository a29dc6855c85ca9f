"""What Ray ships to its workers (step 5 of the flow): ``_decode_unit``, the CPU task that decodes a unit's audio, and
``_Worker``, the actor class that holds one Engine and transcribes (or detects the routes of) one unit per call,
with the fault-injection hook of the tests (``FAULT_ENV``).

Ray pickles these by module path, so workers import them from here: nothing heavy is imported at load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..transcribe.audio import SAMPLE_RATE, AudioError
from .options import EngineSpec

logger = logging.getLogger("lora_whisper")

FAULT_ENV = "LORA_WHISPER_BATCH_FAULT"
"""For fault-injection tests: ``SUBSTRING:MARKER``: the transcription actor that gets a file whose name contains
SUBSTRING kills its own process (``os._exit``) once, recording MARKER so that Ray's retry succeeds."""


def _decode_unit(unit: dict) -> dict:
    """Decode every file of a unit (CPU task). Samples travel as float32 bytes; a bad file gets its error."""
    import tempfile

    import numpy as np

    from ..transcribe.audio import load_audio

    audio, errors = [], []
    for file, path, data, err in zip(unit["files"], unit["paths"], unit["data"], unit["errors"]):
        samples = np.zeros(0, np.float32)
        if not err:
            try:
                if data:  # data set bytes: decode through a temporary file so every check of load_audio applies
                    suffix = Path(path or "").suffix if len(Path(path or "").suffix) <= 6 else ""
                    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
                        tmp.write(data)
                        tmp.flush()
                        try:
                            samples = load_audio(tmp.name, check_silence=unit.get("check_silence", True))
                        except AudioError as e:
                            raise AudioError(str(e).replace(tmp.name, file)) from e
                else:
                    samples = load_audio(path, check_silence=unit.get("check_silence", True))
                if unit.get("head_seconds"):
                    samples = samples[: int(unit["head_seconds"] * SAMPLE_RATE)]
            except AudioError as e:
                err = str(e)
            except Exception as e:  # noqa: BLE001 - a decoder crash on one file must not fail the unit
                err = f"{file}: cannot decode audio ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        audio.append(np.ascontiguousarray(samples, np.float32).tobytes())
        errors.append(err or "")
    return {**unit, "data": [b""] * len(audio), "audio": audio, "errors": errors}


class _Worker:
    """A Ray Data actor: one Engine, built once; ``__call__`` transcribes (or detects routes for) one unit."""

    settings: dict = {}
    """spec (EngineSpec as a dict), options (TranscribeOptions as a dict), mode (transcribe | detect), fault."""

    def __init__(self):
        from ..adapters.registry import Registry
        from ..transcribe.engine import TranscribeOptions
        from ..transcribe.runtime import build_engine

        spec, options = self.settings["spec"], self.settings["options"]
        mode, fault = self.settings.get("mode", "transcribe"), self.settings.get("fault")
        logging.getLogger("lora_whisper").setLevel(logging.WARNING)
        s = EngineSpec(**spec)
        self.engine = build_engine(
            s.base,
            s.quantize,
            s.device,
            Registry(s.registry) if s.registry else None,
            cache_size=s.cache_size,
            runtime=s.runtime,
            threads=s.threads,
        )
        self.options = TranscribeOptions(**options)
        self.mode = mode
        self.fault = fault

    def _maybe_fail(self, files: list[str]) -> None:
        if not self.fault or self.mode != "transcribe":
            return
        needle, _, marker = self.fault.partition(":")
        if any(needle in f for f in files) and marker and not os.path.exists(marker):
            Path(marker).write_text(f"killed pid {os.getpid()} on {needle}\n")
            os._exit(17)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out: dict[str, list] = {"key": [], "index": [], "row": [], "duration": [], "ok": [], "route": []}
        for n in range(len(batch["keys"])):
            unit = {k: batch[k][n] for k in batch}
            for k, v in self._unit(unit).items():
                out[k] += v
        return {k: np.array(v, dtype=object) for k, v in out.items()}

    def _unit(self, unit: dict) -> dict:
        import numpy as np

        from ..transcribe.engine import FileError

        files = [str(f) for f in unit["files"]]
        self._maybe_fail(files)
        ids = [None if i in (None, "") else str(i) for i in unit["ids"]]
        errors = [str(e) for e in unit["errors"]]
        good = [j for j, e in enumerate(errors) if not e]
        inputs = [(files[j], np.frombuffer(unit["audio"][j], np.float32)) for j in good]
        results: dict[int, object] = {j: FileError(files[j], errors[j]) for j in range(len(files)) if errors[j]}
        routes = [""] * len(files)
        try:
            if self.mode == "detect":
                for j, det in zip(good, self.engine.detect(inputs, self.options)):
                    routes[j] = self._route_of(det)
                    results[j] = det
            else:
                for j, res in zip(good, self.engine.transcribe(inputs, self.options)):
                    results[j] = res
        except Exception as e:  # noqa: BLE001 - an engine failure becomes error rows (retried by the next run)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            logger.error("unit of %d files failed: %s", len(files), reason)
            for j in good:
                if j not in results or self.mode == "transcribe":
                    results[j] = FileError(files[j], f"{files[j]}: transcription failed ({reason})")
        out = {"key": [], "index": [], "row": [], "duration": [], "ok": [], "route": []}
        for j in range(len(files)):
            res = results[j]
            row = res.to_dict()
            if ids[j] is not None:
                row["id"] = ids[j]
            ok = not isinstance(res, FileError)
            out["key"].append(str(unit["keys"][j]))
            out["index"].append(int(unit["indices"][j]))
            out["row"].append(json.dumps(row, ensure_ascii=False, default=_plain))
            out["duration"].append(float(getattr(res, "duration", 0.0) or 0.0) if ok else 0.0)
            out["ok"].append(ok)
            out["route"].append(routes[j])
        return out

    def _route_of(self, det) -> str:
        from ..transcribe.routing import RouteRequest, route

        reg = self.engine.registry
        records = reg.active() if reg is not None else []
        o = self.options
        r = route(det.languages or None, records, RouteRequest(o.adapter, o.domain, o.language, o.threshold))
        return r.adapter or "base"


def _plain(value):
    """JSON for what ``to_dict`` may leave as numpy scalars or arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
