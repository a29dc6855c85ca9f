from lora_whisper.registry import AdapterRecord
from lora_whisper.routing import RouteRequest, route

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
