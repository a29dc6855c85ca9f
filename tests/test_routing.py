import json
from pathlib import Path

import pytest

from lora_whisper.adapters.registry import AdapterRecord
from lora_whisper.transcribe.routing import (
    MIN_BASE_PROB,
    RouteRequest,
    accept_claim,
    route,
    should_consult,
    trained_on_synthetic,
)

B = {"hub_id": "openai/whisper-base", "fingerprint": "x"}
RECORDS = [
    AdapterRecord("fr", 1, "fr", B, active=True),
    AdapterRecord("fr-medical", 2, "fr", B, domain="medical", active=True),
    AdapterRecord("fr-medical", 1, "fr", B, domain="medical", active=False),
    AdapterRecord("de-legal", 1, "de", B, domain="legal", active=True),
]


def test_domain_then_language_then_base():
    fr = {"fr": 0.9, "en": 0.1}
    assert route(fr, RECORDS, RouteRequest(domain="medical")).adapter == "fr-medical@2"
    assert route(fr, RECORDS, RouteRequest()).adapter == "fr@1"
    r = route(fr, RECORDS, RouteRequest(domain="legal"))
    assert r.adapter == "fr@1" and "no legal adapter" in r.reason
    assert route({"de": 0.8}, RECORDS, RouteRequest()).adapter is None  # de has only a domain adapter
    assert route({"de": 0.8}, RECORDS, RouteRequest(domain="legal")).adapter == "de-legal@1"
    assert route({"es": 0.99}, RECORDS, RouteRequest(domain="medical")).adapter is None


def test_threshold_forced_language_and_adapter():
    r = route({"fr": 0.4, "en": 0.35}, RECORDS, RouteRequest(domain="medical", threshold=0.5))
    assert r.adapter is None and "below threshold" in r.reason
    r = route(None, RECORDS, RouteRequest(language="fr", domain="medical"))
    assert (r.language, r.probability, r.adapter) == ("fr", None, "fr-medical@2")
    r = route({"ja": 0.6, "fr": 0.3}, RECORDS, RouteRequest(adapter="fr-medical@1"))
    assert (r.language, r.adapter, r.probability) == ("fr", "fr-medical@1", 0.3)
    assert route({"fr": 0.9}, RECORDS, RouteRequest(adapter="none")).adapter is None
    assert route({"fr": 0.9}, RECORDS, RouteRequest(adapter="missing")).adapter == "missing"


# ---- the adapter-consulted gate, on probabilities measured on real and synthetic clips ----------------------------
# tests/data/routing_probs.json is written by `python benchmarks/bench_real.py --sections routing --save-probs ...`:
# for each clip, the base's language probabilities and each adapter's probability of its own language (adapter active).

PROBS = Path(__file__).parent / "data" / "routing_probs.json"
# the same measurement for fr-medical trained with 96 real English contrast clips (recipes/contrast)
PROBS_CONTRAST = Path(__file__).parent / "data" / "routing_probs_contrast.json"
REGRESSION_CLIP = "cv-dev/common_voice_en_37190595.opus"
"""Real English (Common Voice dev) the base got right at 0.47; the old gate sent it to fr-medical (own prob 0.996)."""
RESCUED_AT_LEAST = 16
"""Synthetic French clips the base misdetects that the new gate still gives to fr-medical (measured: 16 of 33)."""


def _measured(path=PROBS):
    data = json.loads(path.read_text())
    recs = [
        AdapterRecord(
            a["ref"].split("@")[0],
            int(a["ref"].split("@")[1]),
            a["language"],
            B,
            domain=a["domain"],
            metrics={"train_kind": a["train_kind"]},
            lora={"scope": a["scope"]},
            active=True,
        )
        for a in data["adapters"]
    ]
    return recs, data["clips"]


def _old_accept(base_probs, rec, own):
    return own >= 0.5


def _claims(clip, recs, accept):
    """Adapters whose claim on this clip is accepted (when the base is unsure enough to consult)."""
    if not should_consult(clip["base_probs"], 0.8):
        return []
    return [r for r in recs if accept(clip["base_probs"], r, clip["own_prob"].get(r.ref, 0.0))]


def test_today_behaviour_is_the_starting_point():
    rec = AdapterRecord("fr-medical", 1, "fr", B, domain="medical", metrics={"train_kind": "synthetic"}, active=True)
    assert should_consult({"fr": 0.5, "es": 0.3}, 0.8) and not should_consult({"fr": 0.85}, 0.8)
    assert not should_consult({"fr": 0.5}, 0.0) and not should_consult({}, 0.8)
    assert accept_claim({"fr": 0.3, "ja": 0.5}, rec, 0.9)
    assert not accept_claim({"fr": 0.3, "ja": 0.5}, rec, 0.4)


def test_claims_need_a_synthetic_routable_adapter_and_a_plausible_language():
    synth = AdapterRecord("fr-medical", 1, "fr", B, domain="medical", metrics={"train_kind": "synthetic"}, active=True)
    real = AdapterRecord("fr", 1, "fr", B, metrics={"train_kind": "real"}, active=True)
    legacy = AdapterRecord("fr-old", 1, "fr", B, recipe={"data": {"source": "synthetic"}}, active=True)
    held = AdapterRecord("fr-bad", 1, "fr", B, metrics={"train_kind": "synthetic"}, active=True, inactive_reason="x")
    probs = {"es": 0.6, "fr": 0.25, "pt": 0.15}
    assert accept_claim(probs, synth, 0.9) and accept_claim(probs, legacy, 0.9)
    assert not accept_claim(probs, real, 0.99)  # real-speech adapters never override the base's detection
    assert not accept_claim(probs, held, 0.99)  # held back: only --adapter forces it
    assert not accept_claim({"es": 0.97, "fr": MIN_BASE_PROB / 2}, synth, 0.99)  # the base finds fr implausible
    assert not accept_claim({"ja": 0.5, "fr": 0.45}, synth, 0.44)  # the adapter is less sure than the base


@pytest.mark.skipif(not PROBS.is_file(), reason="no measured probabilities")
def test_real_speech_is_never_moved_to_another_languages_adapter():
    recs, clips = _measured()
    real = [c for c in clips if c["kind"] == "real"]
    assert len(real) >= 20
    moved_old = [(c["id"], r.ref) for c in real for r in _claims(c, recs, _old_accept) if r.language != c["language"]]
    moved_new = [(c["id"], r.ref) for c in real for r in _claims(c, recs, accept_claim) if r.language != c["language"]]
    assert moved_old, "the measured set holds real clips the old gate misrouted (the regression this guards)"
    assert moved_new == []
    # and language right at least as often as the base alone
    for c in real:
        base_lang = max(c["base_probs"], key=c["base_probs"].get)
        claims = _claims(c, recs, accept_claim)
        decided = max(claims, key=lambda r: c["own_prob"][r.ref]).language if claims else base_lang
        assert decided == base_lang or decided == c["language"], c["id"]


@pytest.mark.skipif(not PROBS.is_file(), reason="no measured probabilities")
def test_a_real_clip_the_old_gate_misrouted_stays_on_the_base():
    from lora_whisper.transcribe.routing import RouteRequest, route

    recs, clips = _measured()
    by_id = {c["id"]: c for c in clips}
    clip = by_id[REGRESSION_CLIP]
    assert clip["kind"] == "real"
    wrong = [r for r in _claims(clip, recs, _old_accept) if r.language != clip["language"]]
    assert wrong  # the old gate sent it to another language's adapter
    assert _claims(clip, recs, accept_claim) == []
    assert route(clip["base_probs"], recs, RouteRequest(domain="medical")).language == clip["language"]


@pytest.mark.skipif(not PROBS.is_file(), reason="no measured probabilities")
def test_synthetic_speech_the_base_misdetects_is_still_claimed():
    recs, clips = _measured()
    synth = [c for c in clips if c["kind"].startswith("synthetic")]
    missed = [c for c in synth if max(c["base_probs"], key=c["base_probs"].get) != c["language"]]
    rescued = [c for c in missed if any(r.language == c["language"] for r in _claims(c, recs, accept_claim))]
    assert missed and len(rescued) >= RESCUED_AT_LEAST, (len(missed), len(rescued))


# ---- calibrated claims: a threshold measured per adapter at the end of training ----------------------------------
def _calibrated(rec, clips, negatives, margin=1.1):
    from lora_whisper.transcribe.routing import calibrate

    pos = [(c["base_probs"], c["own_prob"][rec.ref]) for c in clips if c["language"] == rec.language]
    neg = [(c["base_probs"], c["own_prob"][rec.ref]) for c in negatives]
    rec.calibration = calibrate(pos, neg, rec.language, margin, synthetic=trained_on_synthetic(rec))
    return rec


def _decide(clip, recs, domain=None):
    """The engine's decision on stored probabilities: route() on the base's detection, then consulted claims."""
    from lora_whisper.transcribe.routing import RouteRequest, route

    r = route(clip["base_probs"], recs, RouteRequest(domain=domain))
    if r.adapter:
        return r.adapter
    if not should_consult(clip["base_probs"], 0.8, recs):
        return None
    claims = [x for x in recs if accept_claim(clip["base_probs"], x, clip["own_prob"].get(x.ref, 0.0))]
    return max(claims, key=lambda x: clip["own_prob"][x.ref]).ref if claims else None


def test_calibrate_puts_the_threshold_above_every_other_language():
    from lora_whisper.transcribe.routing import calibrate, claim_score

    pos = [({"fa": 0.4, "ar": 0.5}, 0.99), ({"fa": 0.02, "ur": 0.9}, 0.9), ({"fa": 0.2, "ar": 0.7}, 0.3)]
    neg = [({"ar": 0.95, "fa": 0.03}, 0.97), ({"en": 0.99, "fa": 0.001}, 0.8), ({"ar": 0.9, "fa": 0.08}, 0.2)]
    cal = calibrate(pos, neg, "fa", margin=1.1)
    worst = claim_score(0.03, 0.97, "odds")  # the third negative is no claim (own < 0.5)
    assert cal["score"] == "odds" and cal["threshold"] == round(worst * 1.1, 4)
    assert cal["other"] == {"n": 3, "accepted": 0, "max_score": round(worst, 4)}
    assert cal["own"] == {"n": 3, "accepted": 1}  # the second is under the threshold, the third makes no claim
    assert calibrate(pos, [], "fa") is None  # nothing to calibrate against: no threshold


def test_a_calibrated_claim_needs_the_threshold_and_a_routable_adapter():
    cal = {"threshold": 0.2}
    fa = AdapterRecord("fa-cv", 1, "fa", B, metrics={"train_kind": "real"}, active=True, calibration=cal)
    assert accept_claim({"ar": 0.55, "fa": 0.3}, fa, 0.95)  # a Persian clip the base calls Arabic
    assert not accept_claim({"ar": 0.96, "fa": 0.02}, fa, 0.99)  # Arabic: the base barely gives fa
    assert not accept_claim({"ar": 0.55, "fa": 0.3}, fa, 0.45)  # the adapter itself is unsure
    held = AdapterRecord("fa-cv", 2, "fa", B, active=True, calibration=cal, inactive_reason="worse")
    assert not accept_claim({"ar": 0.55, "fa": 0.3}, held, 0.95)
    # the base is sure of Arabic, but gives fa enough that the claim could pass: consult anyway
    assert should_consult({"ar": 0.85, "fa": 0.1}, 0.8, [fa]) and not should_consult(
        {"ar": 0.85, "fa": 0.01}, 0.8, [fa]
    )


@pytest.mark.skipif(not PROBS.is_file(), reason="no measured probabilities")
def test_a_calibrated_synthetic_adapter_never_takes_real_speech_of_other_speakers():
    """Calibrated on half of the real clips (other languages), checked on the other half: none routed to
    fr-medical; synthetic French held-out clips (other voices) routed with --domain medical at least as often as
    with the fixed gate."""
    recs, clips = _measured()
    rec = recs[0]
    real = [c for c in clips if c["kind"] == "real" and c["language"] != rec.language]
    synth = [c for c in clips if c["kind"].startswith("synthetic")]
    for calib, check in ((real[::2], real[1::2]), (real[1::2], real[::2])):
        _calibrated(rec, synth, calib)
        assert [c["id"] for c in check if _decide(c, [rec], "medical") == rec.ref] == []
        routed = sum(_decide(c, [rec], "medical") == rec.ref for c in synth)
        rec_fixed = AdapterRecord(rec.name, rec.version, "fr", B, domain="medical", metrics=rec.metrics, active=True)
        fixed = sum(_decide(c, [rec_fixed], "medical") == rec.ref for c in synth)
        assert routed >= fixed and routed >= 50, (routed, fixed)


def test_calibrate_scores_by_the_adapters_own_probability_when_it_refuses_other_languages_itself():
    """An adapter trained with contrast clips gives other languages' audio a low own probability: the score is then
    its own probability (the base's probability of a synthetic voice's language is noise), with the threshold above
    every negative; an adapter that claims its language everywhere keeps the geometric score."""
    from lora_whisper.transcribe.routing import calibrate

    pos = [({"ja": 0.6, "fr": 0.003}, 0.999), ({"th": 0.5, "fr": 0.02}, 0.998), ({"fr": 0.3, "ja": 0.4}, 0.4)]
    neg = [({"en": 0.7, "fr": 0.018}, 0.79), ({"de": 0.99, "fr": 0.001}, 0.15), ({"en": 0.99, "fr": 0.05}, 0.01)]
    assert calibrate(pos, neg, "fr", margin=1.1)["score"] == "odds"  # a real-speech adapter: the base informs
    cal = calibrate(pos, neg, "fr", margin=1.1, synthetic=True)
    assert cal["score"] == "own" and cal["threshold"] == round(1 / (1 + (1 - 0.79) / (10 * 0.79)), 4)  # 10x odds
    assert cal["own"] == {"n": 3, "accepted": 2} and cal["other"]["accepted"] == 0
    assert cal["rule"].startswith("adapter p(lang) >=")
    rec = AdapterRecord("fr-medical", 1, "fr", B, domain="medical", active=True, calibration=cal)
    assert accept_claim({"ja": 0.6, "fr": 0.003}, rec, 0.999)  # a synthetic clip the base calls Japanese
    assert not accept_claim({"en": 0.6, "fr": 0.02}, rec, 0.7)  # real English the adapter half-claims
    # sure of English: an own-score adapter is not asked, whatever the base gives French
    assert not should_consult({"en": 0.85, "fr": 0.1}, 0.8, [rec]) and should_consult({"en": 0.6}, 0.8, [rec])
    everywhere = [(p, 0.999) for p, _ in neg]
    assert calibrate(pos, everywhere, "fr", synthetic=True)["score"] == "geometric"


@pytest.mark.skipif(not PROBS_CONTRAST.is_file(), reason="no measured probabilities")
def test_a_contrast_trained_synthetic_adapter_routes_its_clips_and_no_real_speech():
    """Measured probabilities of fr-medical trained with real English contrast clips: calibrated on half of the real
    clips of other languages, checked on the other half, no real clip goes to it, and with --domain medical at least
    54 of the 60 held-out synthetic French clips (other voices and sentences) do; the geometric score took 43."""
    recs, clips = _measured(PROBS_CONTRAST)
    rec = recs[0]
    real = [c for c in clips if c["kind"] == "real" and c["language"] != rec.language]
    synth = [c for c in clips if c["kind"].startswith("synthetic")]
    for calib, check in ((real[::2], real[1::2]), (real[1::2], real[::2])):
        _calibrated(rec, synth, calib)
        assert rec.calibration["score"] == "own"
        assert [c["id"] for c in check if _decide(c, [rec], "medical") == rec.ref] == []
        routed = sum(_decide(c, [rec], "medical") == rec.ref for c in synth)
        assert routed >= 54, routed


# ---- a real-speech adapter: the odds score -------------------------------------------------------------------------
PROBS_FA = Path(__file__).parent / "data" / "routing_probs_fa.json"
"""fa-commonvoice@1 (the Persian recipe, with contrast clips) measured on its validation speaker, the recipe's
calibration negatives, Persian dev (other speakers), 100 real English dev clips and synthetic ar/ur/tr probe clips."""


def test_the_odds_score_tells_a_sure_adapter_from_a_half_sure_one():
    """A Persian clip the base barely recognises, with the adapter sure (odds 10^4), passes where a synthetic Urdu
    clip the adapter half-confuses (0.94) and the base gives as much fa does not; a real English clip the adapter is
    sure of is vetoed by the base. The geometric score of probabilities cannot separate the first two."""
    from lora_whisper.transcribe.routing import calibrate, claim_score

    persian, urdu, english = ({"fa": 0.02, "ar": 0.5}, 0.9999), ({"fa": 0.026, "ur": 0.8}, 0.94), ({"fa": 1e-4}, 0.999)
    cal = calibrate([persian], [urdu, ({"fa": 0.001, "en": 0.99}, 0.3)], "fa", margin=1.1)
    assert cal["score"] == "odds" and cal["other"]["accepted"] == 0 and cal["own"]["accepted"] == 1
    assert cal["threshold"] == round(1.1 * claim_score(0.026, 0.94, "odds"), 4)
    fa = AdapterRecord("fa-cv", 1, "fa", B, metrics={"train_kind": "real"}, active=True, calibration=cal)
    assert accept_claim(persian[0], fa, persian[1])
    assert not accept_claim(urdu[0], fa, urdu[1])  # the same-script language it was calibrated against
    assert not accept_claim({"ar": 0.95, "fa": 0.01}, fa, 0.97)  # Arabic the adapter leans to, the base does not
    assert not accept_claim(english[0], fa, english[1])
    # geometric: the Persian clip scores below the Urdu one, so no threshold takes it and refuses Urdu
    assert claim_score(0.02, 0.9999) < claim_score(0.026, 0.94)
    # a confident base never hides an odds adapter's language: it is always asked (the adapter may be sure)
    assert should_consult({"de": 0.95, "fa": 0.003}, 0.8, [fa])


@pytest.mark.skipif(not PROBS_FA.is_file(), reason="no measured probabilities")
def test_the_persian_adapter_calibrated_by_odds_routes_its_speakers_and_no_other_language():
    """Calibrated as training does (its validation speaker against the recipe's negatives): no probe clip of another
    language passes (real English it never heard, synthetic Arabic/Urdu/Turkish in new voices and sentences), and
    Persian speakers it never heard are routed to it at least 90% of the time, where the geometric score took half."""
    from lora_whisper.transcribe.routing import calibrate, claim_score

    recs, clips = _measured(PROBS_FA)
    rec = recs[0]
    by = lambda *kinds: [c for c in clips if c["kind"] in kinds]  # noqa: E731
    row = lambda c: (c["base_probs"], c["own_prob"][rec.ref])  # noqa: E731
    own, negatives = by("validation"), by("calibration", "calibration-synthetic")
    geometric = calibrate([row(c) for c in own], [row(c) for c in negatives], "fa", synthetic=True)
    rec.calibration = calibrate([row(c) for c in own], [row(c) for c in negatives], "fa")
    assert rec.calibration["score"] == "odds" and geometric["score"] == "geometric"
    probes = by("probe", "probe-synthetic")
    assert len(probes) == 124 and not [c["id"] for c in probes if _decide(c, [rec]) == rec.ref]
    dev = by("dev")
    routed = sum(_decide(c, [rec]) == rec.ref for c in dev)
    t = geometric["threshold"]
    by_geometric = sum(
        c["own_prob"][rec.ref] >= 0.5 and claim_score(c["base_probs"]["fa"], c["own_prob"][rec.ref]) >= t for c in dev
    )
    assert routed >= 0.9 * len(dev) and by_geometric < 0.6 * len(dev), (routed, by_geometric)


def test_odds_edges_and_an_unknown_score_kind():
    """Probabilities at 0 or 1 give finite odds scores; a record whose score this version does not know refuses its
    claims instead of failing the run."""
    from lora_whisper.transcribe.routing import claim_score

    assert claim_score(1.0, 1.0, "odds") == pytest.approx(1e6, rel=1e-3)  # both clipped at MAX_PROB
    assert claim_score(0.0, 1.0, "odds") == 0.0 and claim_score(0.3, 0.0, "odds") == 0.0
    future = AdapterRecord("fa-cv", 1, "fa", B, active=True, calibration={"threshold": 0.1, "score": "learned"})
    assert not accept_claim({"fa": 0.9}, future, 0.99)
    with pytest.raises(ValueError, match="unknown claim score"):
        claim_score(0.5, 0.5, "learned")


# ---- two real-language adapters in one registry: consult only where an adapter may win, the surest claim wins -----
def _pair():
    real = {"train_kind": "real"}
    fa = AdapterRecord("fa-cv", 1, "fa", B, metrics=real, active=True, calibration={"threshold": 3.0, "score": "odds"})
    ur = AdapterRecord("ur-cv", 1, "ur", B, metrics=real, active=True, calibration={"threshold": 5.0, "score": "odds"})
    return fa, ur


def test_two_adapters_whose_detections_disagree():
    from lora_whisper.transcribe.routing import consult, decide

    fa, ur = _pair()
    recs = [fa, ur]
    urdu = {"hi": 0.7, "ur": 0.2, "fa": 0.05, "en": 0.05}  # the base calls this Urdu clip Hindi
    asked = consult(urdu, recs, 0.8)
    assert {r.ref for r in asked} == {"fa-cv@1", "ur-cv@1"}
    r = decide(urdu, {"fa-cv@1": 0.3, "ur-cv@1": 0.9999}, recs, RouteRequest())
    assert (r.adapter, r.language) == ("ur-cv@1", "ur") and "recognises ur" in r.reason
    persian = {"fa": 0.45, "ur": 0.35, "ar": 0.2}  # both adapters claim: the higher score wins, whichever the order
    claims = {"ur-cv@1": 0.9, "fa-cv@1": 0.999}
    assert decide(persian, claims, recs, RouteRequest()).adapter == "fa-cv@1"
    assert decide(persian, dict(reversed(claims.items())), list(reversed(recs)), RouteRequest()).adapter == "fa-cv@1"
    # a claim under its own threshold does not win, however the other adapter scores
    assert decide(persian, {"ur-cv@1": 0.999, "fa-cv@1": 0.2}, recs, RouteRequest()).adapter == "ur-cv@1"


def test_an_adapter_that_refuses_the_audio_is_not_routed_to_on_the_base_detection():
    from lora_whisper.transcribe.routing import consult, decide

    fa, ur = _pair()
    arabic = {"fa": 0.7, "ar": 0.25, "ur": 0.05}  # real Arabic the base mistakes for Persian
    assert route(arabic, [fa, ur], RouteRequest()).adapter == "fa-cv@1"  # the base's detection alone would take it
    assert fa in consult(arabic, [fa, ur], 0.8)
    r = decide(arabic, {"fa-cv@1": 0.04}, [fa, ur], RouteRequest())
    assert (r.adapter, r.language) == (None, "fa") and "does not recognise" in r.reason  # as an empty registry
    # the adapter agrees (own >= 0.5) without passing its threshold: the base's detection stands, as before
    assert decide(arabic, {"fa-cv@1": 0.6}, [fa, ur], RouteRequest()).adapter == "fa-cv@1"


def test_consult_only_where_an_adapter_may_win():
    from lora_whisper.transcribe.routing import consult, decide

    fa, ur = _pair()
    english = {"en": 0.99, "fa": 1e-9, "ur": 1e-8}  # no claim could reach either threshold: nothing is run
    assert consult(english, [fa, ur], 0.8) == []
    assert decide(english, {}, [fa, ur], RouteRequest()).adapter is None
    assert [r.ref for r in consult({"hi": 0.9, "ur": 0.05, "fa": 1e-9}, [fa, ur], 0.8)] == ["ur-cv@1"]
    held = AdapterRecord("ur-cv", 2, "ur", B, active=True, calibration=ur.calibration, inactive_reason="worse")
    assert consult({"ur": 0.4, "hi": 0.5}, [held], 0.8) == []
    # a forced language or adapter skips consulting altogether
    assert decide({"hi": 0.9}, {"ur-cv@1": 0.99}, [ur], RouteRequest(language="hi")).adapter is None
    assert decide({"hi": 0.9}, {}, [ur], RouteRequest(adapter="ur-cv@1")).adapter == "ur-cv@1"
