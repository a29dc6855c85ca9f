"""Routing: a pure function from language probabilities, registry records and the request to a Route.

Never touches a model, so every policy decision is testable with plain dicts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from ..adapters.registry import AdapterRecord

logger = logging.getLogger("lora_whisper")


@dataclass
class RouteRequest:
    """What the user asked for."""

    adapter: str = "auto"
    """``auto`` (route by language/domain), ``none`` (base only) or an adapter reference (``fr-medical@2``)."""
    domain: str | list[str] | None = None
    """Prefer the (language, domain) adapter when it exists; a list is tried in order (medical,legal)."""
    language: str | None = None
    """Forced language; skips detection."""
    threshold: float = 0.5
    """Below this detected-language probability, use the base (an adapter for the wrong language hurts)."""


@dataclass
class Route:
    """The decision for one file or segment."""

    language: str | None
    """Language to decode in."""
    probability: float | None
    """Detected probability of ``language`` (None when forced)."""
    adapter: str | None
    """Adapter reference (name@version), or None for the base."""
    reason: str
    """Why, in words."""

    def to_dict(self) -> dict:
        return asdict(self)


def route(probs: dict[str, float] | None, records: list[AdapterRecord], request: RouteRequest) -> Route:
    """Choose the language and adapter for one file or segment.

    Args:
        probs: detected language probabilities (restricted to candidates), or None when the language is forced.
        records: the registry's active records.
        request: the user's request.

    Policy: ``--adapter NAME`` wins; ``none`` gives the base; otherwise the (language, domain) adapter when a domain
    is asked and exists, else the language adapter (no domain), else the base. Below ``threshold``, the base.
    """
    if request.language:
        language, p = request.language, None
    elif probs:
        language = max(probs, key=probs.get)
        p = probs[language]
    else:
        language, p = None, None

    if request.adapter == "none":
        return Route(language, p, None, "base requested (--adapter none)")
    if request.adapter not in ("auto", None, ""):
        ref = request.adapter
        match = [r for r in records if r.ref == ref or (r.name == ref and r.active)]
        forced_lang = match[0].language if match else None
        if not request.language and forced_lang:
            # the user chose the adapter: decode in its language, whatever detection said
            language, p = forced_lang, (probs or {}).get(forced_lang)
        return Route(language, p, match[0].ref if match else ref, "adapter requested (--adapter)")
    if language is None:
        return Route(None, None, None, "no language (English-only base)")
    if p is not None and p < request.threshold:
        return Route(language, p, None, f"language probability {p:.2f} below threshold {request.threshold}")
    active = [r for r in records if r.routable]  # held-back adapters (inactive_reason) are only used when forced
    domains = [request.domain] if isinstance(request.domain, str) else list(request.domain or [])
    for domain in domains:
        for r in active:
            if r.language == language and r.domain == domain:
                return Route(language, p, r.ref, f"adapter for ({language}, {domain})")
    for r in active:
        if r.language == language and not r.domain:
            why = f"language adapter for {language}" + (f" (no {'/'.join(domains)} adapter)" if domains else "")
            return Route(language, p, r.ref, why)
    what = f"({language}, {'/'.join(domains)})" if domains else language
    return Route(language, p, None, f"no adapter for {what}: base")


# ---- adapter-consulted detection: the engine asks these two pure functions ------------------------------------------
MIN_BASE_PROB = 0.05
"""A claim is accepted only for a language the base itself gives at least this probability on the audio.

Measured (docs/training.md, benchmarks/bench_real.py routing; tests/data/routing_probs.json): a synthetic-voice
adapter's decoder predicts its own language token on almost any audio (fr-medical: own probability 0.99 on real
English), so its own probability cannot tell its domain from real speech of another language. The base can: on the
36 real English clips the old gate sent to fr-medical, the base gave French at most 0.019; on the synthetic French
clips it misdetected, it gave French 0.003-0.23 (half of them 0.05 or more). 0.05 keeps a margin of 2.5x above
the real-speech maximum, at the cost of the synthetic clips the base rates below it (they stay on the base)."""


def trained_on_synthetic(record: AdapterRecord) -> bool:
    """Whether the adapter was trained on synthetic speech (the only adapters whose claims can be worth more than
    the base's own detection: the base is reliable on real speech, and unreliable on synthetic voices)."""
    m = record.metrics or {}
    if m.get("train_kind"):
        return m["train_kind"] == "synthetic"
    return ((record.recipe or {}).get("data") or {}).get("source") == "synthetic"  # records before train_kind


SCORES = {
    "geometric": "sqrt(base p(lang) x adapter p(lang))",
    "own": "adapter p(lang)",
    "odds": "sqrt(base odds(lang) x adapter odds(lang))",
}
"""The claim scores a calibration can choose (``calibrate``), as the record's ``calibration.rule`` writes them."""


OWN_ODDS_MARGIN = 10.0
"""An own-probability threshold sits this many times the highest other-language clip's odds (p / (1 - p)). The highest
own probability of a few hundred negatives is a sample maximum that the next real clip can exceed: fr-medical trained
with contrast clips gave 0.79 at most to 189 calibration clips, and 0.70 and 0.27 to the top two of 166 other real
clips. Probabilities near 1 saturate, so the margin is on the odds, an order of magnitude (0.79 -> 0.974)."""
OWN_MAX_THRESHOLD = 0.99
"""Above this, the adapter does not refuse other languages by itself (its own probability is near 1 on some of them):
the geometric score is used."""


MAX_PROB = 1.0 - 1e-6
"""Probabilities are clipped to this before taking odds (odds at most 1e6): a probability computed in float32 is exact
to about 1e-7 near 1, and the surest Persian validation clip measured 1 - 1.4e-6, so odds above 1e6 are noise."""


def _odds(p: float) -> float:
    p = min(max(p, 0.0), MAX_PROB)
    return p / (1.0 - p)


def _odds_above(p: float, factor: float) -> float:
    """The probability whose odds are ``factor`` times those of ``p``."""
    p = min(max(p, 0.0), 1.0 - 1e-9)
    odds = factor * p / (1.0 - p)
    return odds / (1.0 + odds)


def claim_score(base_prob: float, own_prob: float, kind: str = "geometric") -> float:
    """How strongly an adapter's claim to its language is supported on one piece of audio.

    ``geometric`` (the default): the geometric mean of the base's probability of the language and the adapter's own
    (adapter active): both must agree. A synthetic-voice adapter's decoder gives its own language ~1.0 on any audio,
    so its score follows the base's; a real-speech adapter that learnt its language's sounds raises the score where
    the base hesitates.

    ``own``: the adapter's own probability alone, for an adapter that refuses other languages' audio by itself
    (trained with contrast clips): on a synthetic voice the base's probability of the language is near noise
    (0.002-0.04 for synthetic French), and multiplying by it only loses clips.

    ``odds``: the geometric mean of the base's odds and the adapter's odds of the language (p / (1 - p); in log
    terms the two detectors' log-odds added, as naive Bayes combines two pieces of evidence), for a real-speech
    adapter trained with contrast clips. Its own probability then carries information past 0.99: the Persian adapter
    gives its validation clips odds of 10^1.5-10^5.9 and the synthetic Urdu clip it half-confuses 10^1.0, a
    difference the geometric score flattens (0.9999 against 0.91), so that only the base's hesitant probability
    decided; the base's odds still veto real speech of another language the adapter is sure of (a real English clip
    at own 0.999, base p(fa) 0.0001).
    """
    if kind == "own":
        return max(own_prob, 0.0)
    if kind == "odds":
        return math.sqrt(_odds(base_prob) * _odds(own_prob))
    if kind != "geometric":
        raise ValueError(f"unknown claim score {kind!r}; expected one of {list(SCORES)}")
    return math.sqrt(max(base_prob, 0.0) * max(own_prob, 0.0))


def calibrate(
    positives: list[tuple[dict[str, float], float]],
    negatives: list[tuple[dict[str, float], float]],
    language: str,
    margin: float = 1.1,
    min_own_prob: float = 0.5,
    synthetic: bool = False,
) -> dict | None:
    """The adapter's routing rule, measured: a score and a threshold just above every score of speech in other
    languages (real clips, and synthetic ones of languages no recording is at hand for).

    For an adapter trained on synthetic speech (``synthetic``), the score is its own probability (``own``) when it
    refuses every other-language clip by itself with room to spare (it was trained to say other languages on their
    audio, ``data.contrast``): the threshold is then ``OWN_ODDS_MARGIN`` times the highest negative's odds, and must stay at or below
    ``OWN_MAX_THRESHOLD``; otherwise the geometric mean with the base's probability (``geometric``). A real-speech
    adapter is scored by the geometric mean of the base's and its own odds (``odds``): there the base's probability is
    informed, and its own probability alone took 1 of 100 real English clips it had never heard (the Persian adapter
    trained with English contrast clips), while the geometric score of probabilities cannot tell 0.9999 from 0.94
    (docs/training.md, "Routing without a language"). For ``geometric`` and ``odds`` the threshold is ``margin``
    times the highest negative score. The choice looks at the negatives only, never at the adapter's own clips.

    Args:
        positives: (base probabilities, adapter's own-language probability) on clips of the adapter's language it
            did not train on (its validation clips): they only say how many the rule lets through.
        negatives: the same on clips of other languages (real speech; synthetic where no recording is at hand).
        language: the adapter's language.
        synthetic: the adapter was trained on synthetic speech (``trained_on_synthetic``).
        margin: the threshold is the highest other-language score (among claims the adapter makes, own probability
            >= ``min_own_prob``) times this.

    Returns the record's ``calibration`` (score, threshold, how many of each side it accepts), or None without
    negatives.
    """
    if not negatives:
        return None

    def scores(rows, kind):
        return [claim_score(p.get(language, 0.0), own, kind) for p, own in rows if own >= min_own_prob]

    worst_own = max((own for _, own in negatives), default=0.0)
    own_threshold = max(_odds_above(worst_own, OWN_ODDS_MARGIN), min_own_prob)
    if not synthetic:
        kind = "odds"
    else:
        kind = "own" if own_threshold <= OWN_MAX_THRESHOLD else "geometric"
    neg = scores(negatives, kind)
    worst = max(neg, default=0.0)
    if kind == "own":
        threshold = own_threshold
    elif kind == "odds":  # odds are not bounded by 1
        threshold = max(worst * margin, 1e-4)
    else:
        threshold = min(1.0, max(worst * margin, 1e-4))
    pos = scores(positives, kind)
    return {
        "threshold": round(threshold, 4),
        "score": kind,
        "rule": f"{SCORES[kind]} >= threshold, adapter p(lang) >= {min_own_prob}",
        "margin": margin,
        "min_own_prob": min_own_prob,
        "own": {"n": len(positives), "accepted": sum(s >= threshold for s in pos)},
        "other": {"n": len(negatives), "accepted": sum(s >= threshold for s in neg), "max_score": round(worst, 4)},
    }


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def should_consult(
    base_probs: dict[str, float], options_consult_below: float, records: list[AdapterRecord] | None = None
) -> bool:
    """Whether to ask the candidate adapters about this audio's language.

    When the base is unsure (top probability below ``options_consult_below``), and also, with a calibrated adapter
    among ``records``, whenever the base gives that adapter's language enough probability that its claim could pass
    its threshold (the base's own top language can be wrong with confidence on a language it reads poorly).

    Args:
        base_probs: the base's language probabilities for the file (or segment), restricted to candidates.
        options_consult_below: ``TranscribeOptions.consult_below``; 0 or less turns consulting off.
        records: the candidate adapters.
    """
    if not base_probs or options_consult_below <= 0:
        return False
    if max(base_probs.values()) < options_consult_below:
        return True
    for r in records or []:
        cal = r.calibration or {}
        t = cal.get("threshold")
        # a geometric or odds claim could pass only where the base gives the language enough (the adapter at its
        # surest); an own-score adapter is asked where the base is unsure (above), as uncalibrated ones are
        kind = cal.get("score", "geometric")
        if t is not None and r.routable and kind in ("geometric", "odds"):
            if claim_score(base_probs.get(r.language, 0.0), MAX_PROB if kind == "odds" else 1.0, kind) >= t:
                return True
    return False


def accept_claim(
    base_probs: dict[str, float],
    record: AdapterRecord,
    own_prob: float,
    *,
    min_base_prob: float = MIN_BASE_PROB,
    min_own_prob: float = 0.5,
) -> bool:
    """Whether an adapter's claim on audio (its probability of its own language, adapter active) is accepted.

    A calibrated adapter (``record.calibration``, measured at the end of training by ``calibrate``): routable, sure
    (``own_prob >= min_own_prob``), and its ``claim_score`` (the kind its calibration chose) at or above its threshold.

    An uncalibrated one, all must hold:
      - the adapter is routable (active, not held back as worse than the base);
      - it was trained on synthetic speech: real-speech adapters never override the base's detection;
      - the base gives the claimed language at least ``min_base_prob``: real speech of another language is never
        moved to this adapter, however sure the adapter is (its decoder predicts its own token on most audio);
      - the adapter is sure (``own_prob >= min_own_prob``) and surer than the base about that language.

    Args:
        base_probs: the base's language probabilities for the same audio.
        record: the claiming adapter's registry record.
        own_prob: the adapter's probability of ``record.language`` on that audio, computed with the adapter active.
        min_base_prob: see MIN_BASE_PROB.
        min_own_prob: the adapter's own probability needed.
    """
    if not record.routable:
        return False
    base_p = base_probs.get(record.language, 0.0)
    cal = record.calibration or {}
    threshold = cal.get("threshold")
    if threshold is not None:
        kind = cal.get("score", "geometric")
        if kind not in SCORES:  # a record from a newer lora-whisper: refuse its claims rather than fail the run
            _warn_once(
                f"adapter {record.ref}: unknown routing score {kind!r} in its calibration; its claims are refused"
            )
            return False
        return own_prob >= min_own_prob and claim_score(base_p, own_prob, kind) >= threshold
    if not trained_on_synthetic(record) or base_p < min_base_prob:
        return False
    return own_prob >= min_own_prob and own_prob > base_p


def may_claim(base_probs: dict[str, float], record: AdapterRecord, consult_below: float) -> bool:
    """Whether adapter ``record`` could win this audio, so is worth consulting (its detection costs a decoder step,
    an encoder pass for an encoder adapter).

    A calibrated geometric or odds adapter: where its claim could pass its threshold with the adapter at its surest
    (the base gives its language enough); other adapters (own-score, uncalibrated): where the base is unsure (top
    probability below ``consult_below``).
    """
    if not base_probs or consult_below <= 0 or not record.routable:
        return False
    cal = record.calibration or {}
    t, kind = cal.get("threshold"), cal.get("score", "geometric")
    if t is not None and kind in ("geometric", "odds"):
        return claim_score(base_probs.get(record.language, 0.0), MAX_PROB if kind == "odds" else 1.0, kind) >= t
    return max(base_probs.values()) < consult_below


def consult(base_probs: dict[str, float], records: list[AdapterRecord], consult_below: float) -> list[AdapterRecord]:
    """The candidate adapters to ask about this audio (``may_claim``); none when the base is sure and no calibrated
    adapter could pass."""
    return [r for r in records if may_claim(base_probs, r, consult_below)]


def decide(
    base_probs: dict[str, float] | None,
    claims: dict[str, float],
    records: list[AdapterRecord],
    request: RouteRequest,
) -> Route:
    """The route for one file or segment, from the base's detection and the consulted adapters' claims.

    Args:
        base_probs: the base's language probabilities (None when the language is forced).
        claims: adapter ref -> its probability of its own language on the audio, for the adapters consulted
            (``consult``).
        records: the registry's active records.
        request: the user's request.

    An accepted claim (``accept_claim``) wins, the highest score first. Without one, ``route`` follows the base's
    detection, except to an adapter that was consulted and refused the audio (its own probability of its language
    below one half): a third language the base mistook for an adapter's stays on the base.
    """
    if request.language or request.adapter not in ("auto", None, "") or not base_probs:
        return route(base_probs, records, request)
    by_ref = {r.ref: r for r in records}
    best: tuple[float, AdapterRecord] | None = None
    for ref, own in claims.items():
        rec = by_ref.get(ref)
        if rec is None or not accept_claim(base_probs, rec, own):
            continue
        kind = (rec.calibration or {}).get("score", "geometric")
        score = claim_score(base_probs.get(rec.language, 0.0), own, kind) if rec.calibration else own
        if best is None or score > best[0]:
            best = (score, rec)
    if best is not None:
        score, rec = best
        top = max(base_probs, key=base_probs.get)
        return Route(
            rec.language,
            claims[rec.ref],
            rec.ref,
            f"base says {top} ({base_probs[top]:.2f}); adapter {rec.ref} recognises {rec.language} "
            f"({claims[rec.ref]:.2f}, score {score:.3g})",
        )
    refused = {ref for ref, own in claims.items() if own < 0.5}
    r = route(base_probs, [x for x in records if x.ref not in refused], request)
    said_no = [x for x in refused if x in by_ref and by_ref[x].language == r.language]
    if r.adapter is None and said_no:
        r.reason = f"adapter {said_no[0]} does not recognise {r.language} ({claims[said_no[0]]:.2f}): base"
    return r
