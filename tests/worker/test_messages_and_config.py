from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from engine.serving.main import EngineSettings
from tests.schemas import SCHEMAS, check, check_record, check_verdict
from worker.config import ConfigError, environment, load
from worker.messages import Malformed, Source, dead_letter, encode_record, parse_request, verdict

SRC = Source("in", 3, 42)


def test_json_and_bare_url_requests() -> None:
    r = parse_request(json.dumps({"id": "x1", "url": " https://a.example/i.jpg ", "metadata": {"k": [1]}}).encode(), SRC, 1000)
    assert (r.id, r.url, r.metadata) == ("x1", "https://a.example/i.jpg", {"k": [1]})
    bare = parse_request(b"http://a.example/i.png\n", SRC, 1000)
    assert (bare.id, bare.url) == ("in/3/42", "http://a.example/i.png")


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"", "empty"), (b"x" * 200_001, "oversized"), (b"\xff\xfe", "not_utf8"), (b"hello", "not_json"), (b"{bad", "not_json"),
     (b"[1]", "not_object"), (b'{"id": "a"}', "no_url"), (b'{"id": 5, "url": "http://a/b"}', "bad_id"),
     (b"/etc/passwd", "not_json"),
     # The json module's other exceptions: ValueError for integers over 4,300 digits, RecursionError.
     (b'{"id": "a", "url": "http://a/b", "metadata": ' + b"9" * 5000 + b"}", "not_json"),
     (b"[" * 30000 + b"]" * 30000, "too_deep"),
     (b'{"url": "http://a/b", "metadata": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}", "too_deep"),
     # Values JSON cannot carry back out: NaN, infinities (also by overflow), lone surrogates.
     (b'{"url": "http://a/b", "metadata": NaN}', "not_json"), (b'{"url": "http://a/b", "metadata": [-Infinity]}', "not_json"),
     (b'{"url": "http://a/b", "metadata": 1e400}', "not_json"), (b'{"id": "\\ud800", "url": "http://a/b"}', "invalid_unicode"),
     (b'{"url": "http://a/\\udfff"}', "invalid_unicode"), (b'{"url": "http://a/b", "metadata": {"\\ud83d": 1}}', "invalid_unicode")],
)
def test_malformed_messages_have_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        parse_request(value, SRC, 200_000)
    assert info.value.reason == reason
    letter = encode_record(dead_letter(value, SRC, info.value, 4096), 4096)
    assert len(letter) <= 4096 and json.loads(letter)["reason"] == reason


def test_every_accepted_request_encodes_as_strict_json() -> None:
    """What parsing accepts always comes back out as UTF-8 JSON (no NaN, no surrogates), even when huge."""
    meta = {"emoji": "\U0001F600", "escaped": "\u2028", "deep": [[[[1.5e300]]]], "big": 10**4000}
    r = parse_request(json.dumps({"id": "\u00e9t\u00e9", "url": "http://a/b", "metadata": meta}).encode(), SRC, 100_000)
    v = verdict(r, model={"name": "dda", "version": "1"}, threshold=0.5, status="ok")
    blob = encode_record(v, 1 << 20)
    assert json.loads(blob.decode("utf-8"), parse_constant=lambda c: pytest.fail(c))["metadata"] == meta
    small = encode_record(v, 2000)  # over the limit: sent without metadata, marked, not refused
    assert len(small) <= 2000 and json.loads(small)["truncated"] is True and json.loads(small)["metadata"] is None


def test_dead_letters_fit_the_producer_limit_and_describe_the_whole_message() -> None:
    import base64
    import hashlib

    raw = b"{" + b"x" * 900_000
    d = dead_letter(raw, SRC, Malformed("oversized", "too big"), 1 << 20)
    assert len(encode_record(d, 1 << 20)) <= 1 << 20
    assert d["raw_truncated"] is True and d["raw_size"] == len(raw) and d["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(base64.b64decode(d["raw_base64"]))
    small = dead_letter(b"abc", SRC, Malformed("not_json", "x"), 1 << 20)
    assert small["raw_truncated"] is False and base64.b64decode(small["raw_base64"]) == b"abc"
    compact = json.loads(encode_record(d, 1 << 20, compact=True))  # what is sent after the broker refused the size
    assert compact["raw_truncated"] is True and len(compact["raw_base64"]) <= 4096


def test_local_paths_only_in_stdin_mode() -> None:
    assert parse_request(b"/data/a.jpg", SRC, 1000, allow_paths=True).url == "/data/a.jpg"


def test_verdict_and_dead_letter_shapes() -> None:
    r = parse_request(b'{"id": "q", "url": "http://a/b"}', SRC, 1000)
    v = verdict(r, model={"name": "dda", "version": "dda-1"}, threshold=0.5, status="error", error={"code": "url_blocked", "message": "m"})
    check_verdict(v)  # versions 4, 3, 2 and 1
    assert v["schema_version"] == 4 and v["provenance"] is None and v["label_reason"] is None and "shadow" not in v and "models" not in v
    d = check_record(dead_letter(b"raw", SRC, Malformed("not_json", "x"), 1 << 20))
    assert d["source"] == {"topic": "in", "partition": 3, "offset": 42} and d["raw_base64"] == "cmF3"
    with pytest.raises(AssertionError, match="provenance"):
        check_verdict({k: x for k, x in v.items() if k != "provenance"})  # the checks can fail
    with pytest.raises(AssertionError, match="status"):
        check_verdict({**v, "status": "maybe"})


def test_schemas_describe_requests_and_stay_additive() -> None:
    """Version 2 requires all of version 1 and adds two fields, versions 3 and 4 build on the one before
    and add optional ones; a request is what parse_request accepts."""
    v1, v2, v3, v4 = (json.loads((SCHEMAS / f"verdict.v{n}.schema.json").read_text()) for n in (1, 2, 3, 4))
    assert set(v2["required"]) == {"provenance", "label_reason"} and v2["allOf"] == [{"$ref": "verdict.v1.schema.json"}]
    assert v3["allOf"] == [{"$ref": "verdict.v2.schema.json"}] and "required" not in v3 and set(v3["properties"]) == {"schema_version", "shadow", "hash_list_match"}
    assert v4["allOf"] == [{"$ref": "verdict.v3.schema.json"}] and "required" not in v4 and set(v4["properties"]) == {"schema_version", "models", "assessment"}
    assert set(v1["required"]) >= {"schema_version", "id", "url", "status", "label", "score", "logit", "hashes", "error"}
    for value in (b'{"url": "http://a/b"}', b'{"id": "x", "url": "https://a/b", "metadata": [1, {"k": null}]}'):
        check("request.schema.json", json.loads(value))
        parse_request(value, SRC, 1000)
    for value in (b'{"id": "x"}', b'{"id": "", "url": "http://a/b"}', b'{"url": 7}'):
        with pytest.raises(AssertionError):
            check("request.schema.json", json.loads(value))
        with pytest.raises(Malformed):
            parse_request(value, SRC, 1000)


def test_config_defaults_env_flags_and_errors() -> None:
    c = load({})
    assert (c.input_topic, c.output_topic, c.dlq_topic, c.group_id, c.redis_url, c.kafka_bootstrap) == (
        "dda.requests", "dda.verdicts", "dda.dead-letter", "dda-worker", None, None)
    c = load({"DDA_MAX_BATCH": "8", "DDA_FETCH_ALLOW_NETWORKS": "10.1.0.0/16, 127.0.0.0/8"}, {"max_batch": "16"})
    assert c.max_batch == 16 and [str(n) for n in c.fetch_allow_networks] == ["10.1.0.0/16", "127.0.0.0/8"]
    for env, message in [({"DDA_MAX_BATCH": "0"}, "DDA_MAX_BATCH"), ({"DDA_FETCH_ALLOW_NETWORKS": "10.0.0.0/33"}, "bad network"),
                         ({"DDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_MECHANISM"), ({"DDA_DEVICE": "tpu"}, "must be one of"),
                         ({"DDA_OUTPUT_TOPIC": "dda.requests"}, "must differ"),
                         ({"DDA_MAX_MESSAGE_BYTES": "200000"}, "1/8 of DDA_KAFKA_MAX_REQUEST_BYTES"),
                         ({"DDA_REVOKE_TIMEOUT_S": "6"}, "half the session timeout"),
                         ({"DDA_DELIVERY": "exactly_once"}, "needs DDA_KAFKA_BOOTSTRAP"),
                         ({"DDA_DELIVERY": "exactly-once"}, "must be one of"),
                         ({"DDA_INSTANCE_ID": "pod/0"}, "a-z A-Z 0-9"), ({"DDA_INSTANCE_ID": "p" * 241}, "at most 240")]:
        with pytest.raises(ConfigError, match=message):
            load(env)
    exactly = load({"DDA_DELIVERY": "exactly_once", "DDA_KAFKA_BOOTSTRAP": "k:9092"})
    assert exactly.member_slot() == socket.gethostname() and not exactly.static_membership
    assert load({"DDA_INSTANCE_ID": "pod-7.a_b"}).member_slot() == "pod-7.a_b"
    sasl = load({"DDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "DDA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                 "DDA_KAFKA_SASL_USERNAME": "u", "DDA_KAFKA_SASL_PASSWORD": "p"})
    assert sasl.kafka_client_options() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                           "sasl_plain_username": "u", "sasl_plain_password": "p"}


def test_a_configuration_handed_on_as_environment_parses_back_to_itself(tmp_path: Path) -> None:
    """What a pod gives its consumer processes: every setting, flags included, as the text `load`
    parses; values that are unset, switched, listed, fractional or defaulted all come back equal."""
    pem = tmp_path / "anchors.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
    flags = {"kafka_bootstrap": "broker:9092", "max_batch": "64", "redis_cluster": "on", "shadow_fraction": "0.125",
             "fetch_allow_networks": "10.0.0.0/8,fd00::/8", "ensemble": "/m/c.json", "second_model": "/m/commfor",
             "instance_id": "pod-7", "c2pa_trust_anchors": str(pem), "drain_timeout_s": "12.5", "precision": "bf16"}
    config = load({"DDA_MAX_WAIT_MS": "0", "DDA_LOG_LEVEL": "debug"}, flags)
    assert load(environment(config)) == config
    assert load(environment(load({}))) == load({})
    consumer = load(environment(config, consumers=1, engine_socket="/tmp/e.sock", metrics_port=0, ensemble=None, second_model=None))
    assert (consumer.kafka_bootstrap, consumer.max_batch, consumer.engine_socket, consumer.ensemble) == ("broker:9092", 64, "/tmp/e.sock", None)


def test_the_engine_processs_settings_survive_its_command_line(tmp_path: Path) -> None:
    settings = EngineSettings(tmp_path / "model", str(tmp_path / "e.sock"), 4321, backend="torch", device="cuda", precision="bf16",
                              max_batch=128, engine_dir=tmp_path / "engines", compile=True, second_model=tmp_path / "commfor",
                              log_level="warning")
    command = settings.command()
    assert command[1:3] == ["-m", "engine.serving.main"] and EngineSettings.parse(command[3:]) == settings
    plain = EngineSettings(tmp_path / "model", "s", 1)
    assert EngineSettings.parse(plain.command()[3:]) == plain
