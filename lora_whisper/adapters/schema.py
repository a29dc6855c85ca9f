"""The one schema of an adapter record (``lora_whisper.json``): every field the code reads, nested ones included,
with its type and range. ``check_record`` collects every problem (``field: what is wrong``) so that a record is
refused or skipped whole, where it enters (train, import, pull, the admin endpoint, reading the registry), and no
later code meets a bad value. No torch import here."""

from __future__ import annotations

import math
import re
import reprlib

from ..transcribe.segments import MAX_BEAM_SIZE, filed_beam_size

WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la mi "
    "ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd "
    "gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()
"""Whisper's language codes (the 100 of openai-whisper's tokenizer)."""
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
"""An adapter (family) name: it is also a folder name in the registry."""
DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
"""A domain label: letters, digits and '-'."""
SCOPES = ("encoder+decoder", "decoder")
"""Where the LoRA layers are (``lora.scope``)."""
SCORE_KINDS = ("geometric", "own", "odds")
"""The claim scores a calibration can choose (``routing.SCORES``; a test keeps the two equal)."""
REQUIRED_FIELDS = ("name", "version", "language", "base")
MAX_METADATA_BYTES = 4 << 20
"""A ``lora_whisper.json`` larger than this is refused unread (a record is a few kB, its recipe included)."""


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "version": (int,),
    "language": (str,),
    "base": (dict,),
    "domain": (str,),
    "lora": (dict,),
    "metrics": (dict,),
    "recipe": (dict,),
    "data_fingerprint": (str,),
    "train_seconds": (int, float),
    "created": (str,),
    "source": (str,),
    "inactive_reason": (str,),
    "calibration": (dict,),
    "decoding": (dict,),
}
"""The JSON type of each top-level field (null is allowed for the optional ones)."""


def _has_type(value, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a version number or a duration
        return bool in types
    return isinstance(value, types)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v, low: float | None = None, high: float | None = None) -> bool:
    return (
        _number(v) and math.isfinite(v) and (low is None or v >= low) and (high is None or v <= high)  # type: ignore[operator]
    )


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()  # keyword arguments need Python 3.12
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 4, 60, 60
    return r


_REPR = _bounded_repr()


def show(value) -> str:
    """A bounded repr for messages (recipes, records, options): a YAML alias bomb is never printed whole."""
    return _REPR.repr(value)


class _Checker:
    """Collects ``field: problem`` lines for one record."""

    def __init__(self, data: dict):
        self.data, self.problems = data, []

    def bad(self, where: str, expected: str, value) -> None:
        self.problems.append(f"{where}: expected {expected}, got {show(value)}")

    def section(self, key: str) -> dict:
        """The object at ``key``; {} when absent, null or not an object (``FIELD_TYPES`` reports the last)."""
        v = self.data.get(key)
        return v if isinstance(v, dict) else {}

    def optional(self, section: dict, where: str, test, expected: str, keys: tuple[str, ...]) -> None:
        for k in keys:
            v = section.get(k)
            if v is not None and not test(v):
                self.bad(f"{where}.{k}" if where else k, expected, v)


def check_record(data: dict) -> list[str]:
    """Every problem of a record's JSON object (empty when valid), each ``field: expected ..., got ...``."""
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    c = _Checker(data)
    missing = [k for k in REQUIRED_FIELDS if data.get(k) in (None, "")]
    if isinstance(data.get("base"), dict) and not data["base"].get("hub_id"):
        missing.append("base.hub_id")
    if missing:
        c.problems.append(f"missing field(s) {', '.join(missing)}")
    wrong = [
        f"{k} ({type(data[k]).__name__}, expected {' or '.join(t.__name__ for t in types)})"
        for k, types in FIELD_TYPES.items()
        if data.get(k) is not None and not _has_type(data[k], types)
    ]
    if wrong:
        c.problems.append(f"wrong type for field(s) {', '.join(wrong)}")
    _top(c, {k: v for k, v in data.items() if k not in FIELD_TYPES or v is None or _has_type(v, FIELD_TYPES[k])})
    _base(c)
    _lora(c)
    _metrics(c)
    _calibration(c)
    _decoding(c)
    recipe = c.section("recipe")
    if recipe.get("data") is not None and not isinstance(recipe["data"], dict):
        c.bad("recipe.data", "an object", recipe["data"])
    return c.problems


def _top(c: _Checker, d: dict) -> None:
    """The top-level values (of the right JSON type): names, codes and ranges."""
    name, version, language, domain = d.get("name"), d.get("version"), d.get("language"), d.get("domain")
    if name not in (None, "") and not (NAME_RE.match(name) and ".." not in name):
        c.problems.append(
            f"name: {show(name)} is not allowed: use 1-64 lower-case letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    if version is not None and version < 0:
        c.bad("version", "an integer >= 0", version)
    if language not in (None, "") and language not in WHISPER_LANGUAGES:
        c.bad("language", "a Whisper language code (e.g. fr, de, es)", language)
    if domain is not None and not DOMAIN_RE.match(domain):
        c.bad("domain", "letters, digits or '-' (at most 64)", domain)
    c.optional(d, "", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0", ("train_seconds",))


def _base(c: _Checker) -> None:
    c.optional(c.section("base"), "base", lambda v: isinstance(v, str), "a string", ("hub_id", "fingerprint"))


def _lora(c: _Checker) -> None:
    lora = c.section("lora")
    c.optional(lora, "lora", lambda v: _integer(v) and 1 <= v <= 4096, "an integer from 1 to 4096", ("r",))
    c.optional(lora, "lora", lambda v: _finite(v) and v > 0, "a finite number > 0", ("alpha",))
    c.optional(lora, "lora", lambda v: _finite(v, 0) and v < 1, "a number in [0, 1)", ("dropout",))
    c.optional(lora, "lora", lambda v: v in SCOPES, f"one of {list(SCOPES)}", ("scope",))
    c.optional(lora, "lora", lambda v: _integer(v) and v >= 0, "an integer >= 0", ("trainable_params",))
    targets = lora.get("target_modules")
    if targets is not None and not (
        isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        c.bad("lora.target_modules", "a list of module names or a regex string", targets)


def _metrics(c: _Checker) -> None:
    m = c.section("metrics")
    c.optional(m, "metrics", lambda v: isinstance(v, str), "a string", ("kind", "split", "train_kind"))
    c.optional(m, "metrics", lambda v: _integer(v) and v >= 0, "an integer >= 0", ("held_out",))
    c.optional(m, "metrics", lambda v: isinstance(v, list), "a list", ("evaluations",))
    for side in ("before", "after"):
        s = m.get(side)
        if s is None:
            continue
        if not isinstance(s, dict):
            c.bad(f"metrics.{side}", "an object", s)
            continue
        c.optional(s, f"metrics.{side}", lambda v: _finite(v, 0), "a finite number >= 0", ("wer", "cer"))


def _calibration(c: _Checker) -> None:
    cal = c.section("calibration")
    c.optional(cal, "calibration", lambda v: _finite(v, 0), "a finite number >= 0", ("threshold",))
    c.optional(cal, "calibration", lambda v: v in SCORE_KINDS, f"one of {list(SCORE_KINDS)}", ("score",))
    c.optional(cal, "calibration", lambda v: _finite(v, 1), "a finite number >= 1", ("margin",))
    c.optional(cal, "calibration", lambda v: _finite(v, 0, 1), "a number in [0, 1]", ("min_own_prob",))
    c.optional(cal, "calibration", lambda v: isinstance(v, str), "a string", ("rule",))
    c.optional(cal, "calibration", lambda v: isinstance(v, dict), "an object", ("own", "other"))
    langs = cal.get("languages")
    if langs is not None and not (isinstance(langs, list) and all(isinstance(x, str) for x in langs)):
        c.bad("calibration.languages", "a list of language codes", langs)


def _decoding(c: _Checker) -> None:
    dec = c.section("decoding")
    beam = dec.get("beam_size")
    if beam is not None and filed_beam_size(beam) is None:
        c.bad("decoding.beam_size", f"an integer from 1 to {MAX_BEAM_SIZE}", beam)
    c.optional(dec, "decoding", lambda v: isinstance(v, bool), "true or false", ("drop_failed",))
