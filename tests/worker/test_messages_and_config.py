from __future__ import annotations

import json

import pytest

from worker.config import ConfigError, load
from worker.messages import Malformed, Source, dead_letter, parse_request, verdict

SRC = Source("in", 3, 42)


def test_json_and_bare_url_requests() -> None:
    r = parse_request(json.dumps({"id": "x1", "url": " https://a.example/i.jpg ", "metadata": {"k": [1]}}).encode(), SRC, 1000)
    assert (r.id, r.url, r.metadata) == ("x1", "https://a.example/i.jpg", {"k": [1]})
    bare = parse_request(b"http://a.example/i.png\n", SRC, 1000)
    assert (bare.id, bare.url) == ("in/3/42", "http://a.example/i.png")


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"", "empty"), (b"x" * 2000, "oversized"), (b"\xff\xfe", "not_utf8"), (b"hello", "not_json"), (b"{bad", "not_json"),
     (b"[1]", "not_object"), (b'{"id": "a"}', "no_url"), (b'{"id": 5, "url": "http://a/b"}', "bad_id"),
     (b"/etc/passwd", "not_json")],
)
def test_malformed_messages_have_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        parse_request(value, SRC, 1000)
    assert info.value.reason == reason


def test_local_paths_only_in_stdin_mode() -> None:
    assert parse_request(b"/data/a.jpg", SRC, 1000, allow_paths=True).url == "/data/a.jpg"


def test_verdict_and_dead_letter_shapes() -> None:
    r = parse_request(b'{"id": "q", "url": "http://a/b"}', SRC, 1000)
    v = verdict(r, model={"name": "dda", "version": "dda-1"}, threshold=0.5, status="error", error={"code": "url_blocked", "message": "m"})
    assert set(v) == {"schema_version", "id", "url", "status", "label", "score", "logit", "threshold", "model", "hashes",
                      "cache", "error", "timings_ms", "processed_at", "metadata"}
    d = dead_letter(b"raw", SRC, Malformed("not_json", "x"))
    assert d["source"] == {"topic": "in", "partition": 3, "offset": 42} and d["raw_base64"] == "cmF3"


def test_config_defaults_env_flags_and_errors() -> None:
    c = load({})
    assert (c.input_topic, c.output_topic, c.dlq_topic, c.group_id, c.redis_url, c.kafka_bootstrap) == (
        "dda.requests", "dda.verdicts", "dda.dead-letter", "dda-worker", None, None)
    c = load({"DDA_MAX_BATCH": "8", "DDA_FETCH_ALLOW_NETWORKS": "10.1.0.0/16, 127.0.0.0/8"}, {"max_batch": "16"})
    assert c.max_batch == 16 and [str(n) for n in c.fetch_allow_networks] == ["10.1.0.0/16", "127.0.0.0/8"]
    for env, message in [({"DDA_MAX_BATCH": "0"}, "DDA_MAX_BATCH"), ({"DDA_FETCH_ALLOW_NETWORKS": "10.0.0.0/33"}, "bad network"),
                         ({"DDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_MECHANISM"), ({"DDA_DEVICE": "tpu"}, "must be one of"),
                         ({"DDA_OUTPUT_TOPIC": "dda.requests"}, "must differ")]:
        with pytest.raises(ConfigError, match=message):
            load(env)
    sasl = load({"DDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "DDA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                 "DDA_KAFKA_SASL_USERNAME": "u", "DDA_KAFKA_SASL_PASSWORD": "p"})
    assert sasl.kafka_client_options() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                           "sasl_plain_username": "u", "sasl_plain_password": "p"}
