"""Worker settings: each an environment variable and a `dda worker` flag (the flag wins).

Validated at start-up so a typo fails the pod with a clear message instead of a worker
that runs with a silent default.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from engine.process.logs import LEVELS
from engine.runners.contract import BACKENDS, DEVICES, PRECISION_CHOICES, Backend, Precision
from worker.fetch.client import IPNetwork, parse_networks
from worker.provenance.policy import POLICIES
from worker.setting_values import (
    choice,
    fraction,
    non_negative_int,
    off_or_path,
    optional,
    pem_certificates,
    port,
    positive_float,
    positive_int,
    slot,
    switch,
)


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str


def setting(env: str, default: str, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=None, metadata={"setting": Setting(env, default, parse, help)})


@dataclass(frozen=True)
class WorkerConfig:
    kafka_bootstrap: str | None = setting("DDA_KAFKA_BOOTSTRAP", "", optional, "Kafka bootstrap servers; unset: read stdin, write stdout")
    input_topic: str = setting("DDA_INPUT_TOPIC", "dda.requests", str, "topic of image requests")
    output_topic: str = setting("DDA_OUTPUT_TOPIC", "dda.verdicts", str, "topic verdicts are published to, keyed by request id")
    dlq_topic: str = setting("DDA_DLQ_TOPIC", "dda.dead-letter", str, "topic for malformed messages")
    group_id: str = setting("DDA_GROUP_ID", "dda-worker", str, "consumer group id")
    kafka_security_protocol: str = setting("DDA_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "Kafka security protocol")
    kafka_sasl_mechanism: str | None = setting("DDA_KAFKA_SASL_MECHANISM", "", optional, "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER")
    kafka_sasl_username: str | None = setting("DDA_KAFKA_SASL_USERNAME", "", optional, "SASL user")
    kafka_sasl_password: str | None = setting("DDA_KAFKA_SASL_PASSWORD", "", optional, "SASL password")
    kafka_ssl_cafile: str | None = setting("DDA_KAFKA_SSL_CAFILE", "", optional, "CA bundle for the brokers' certificates")
    kafka_ssl_certfile: str | None = setting("DDA_KAFKA_SSL_CERTFILE", "", optional, "client certificate (mutual TLS)")
    kafka_ssl_keyfile: str | None = setting("DDA_KAFKA_SSL_KEYFILE", "", optional, "client key (mutual TLS)")
    kafka_connect_timeout_s: float = setting("DDA_KAFKA_CONNECT_TIMEOUT_S", "30", positive_float,
                                             "how long the worker waits at start for a broker to answer before it exits 1")
    session_timeout_ms: int = setting("DDA_KAFKA_SESSION_TIMEOUT_MS", "10000", positive_int, "consumer group session timeout")
    delivery: str = setting("DDA_DELIVERY", "at_least_once", choice("at_least_once", "exactly_once"),
                            "at_least_once: a verdict may be published again after a crash or rebalance; exactly_once: verdicts, dead letters "
                            "and input offsets commit together in Kafka transactions (subscribers read with isolation_level=read_committed)")
    instance_id: str | None = setting("DDA_INSTANCE_ID", "", slot,
                                      "exactly_once: this worker's stable slot, named in its transactional.id (a pod's consumers add -c0, "
                                      "-c1, ...): unique per worker, the same after a restart; unset: the host name")
    static_membership: bool = setting("DDA_STATIC_MEMBERSHIP", "off", switch,
                                      "exactly_once: join as a static member named by the slot (group.instance.id): a restarted slot takes "
                                      "its partitions back without a rebalance; an orderly stop leaves the group")
    transaction_interval_ms: int = setting("DDA_TRANSACTION_INTERVAL_MS", "100", positive_int,
                                           "exactly_once: how often a transaction publishes and commits what has finished")
    redis_url: str | None = setting("DDA_REDIS_URL", "", optional, "Redis URL for the verdict cache; unset: in-process cache")
    redis_cluster: bool = setting("DDA_REDIS_CLUSTER", "off", switch, "on: DDA_REDIS_URL names a node of a Redis Cluster (the client finds the rest)")
    cache_ttl_s: int = setting("DDA_CACHE_TTL_S", "604800", positive_int, "verdict cache TTL, seconds")
    near_index_max_hashes: int = setting("DDA_NEAR_INDEX_MAX_HASHES", "20000000", positive_int,
                                         "PDQ hashes each consumer process indexes in memory (~63 bytes each, twice that during a rebuild); more are not indexed (counted)")
    model: str | None = setting("DDA_MODEL", "", optional, "model directory or hf:// checkpoint; unset: the official DDA checkpoint")
    shadow_model: str | None = setting("DDA_SHADOW_MODEL", "", optional,
                                       "a candidate model directory scored beside the served one on sampled misses (verdict field shadow); never changes a label")
    shadow_fraction: float = setting("DDA_SHADOW_FRACTION", "1.0", fraction, "share of misses the shadow model scores (by SHA-256), 0 < f <= 1")
    second_model: str | None = setting("DDA_SECOND_MODEL", "", optional,
                                       "a second detector's model directory (Community Forensics), scored on its own crop of every miss; needs DDA_ENSEMBLE")
    ensemble: str | None = setting("DDA_ENSEMBLE", "off", off_or_path,
                                   "off: DDA alone; or a combiner file (dda calibrate --second): both models' logits make the verdict")
    device: str = setting("DDA_DEVICE", "cpu", choice(*DEVICES), "inference device")
    precision: Precision | Literal["auto"] = setting("DDA_PRECISION", "auto", choice(*PRECISION_CHOICES),
                                                      "torch precision; auto: bf16 on cuda, fp32 (the reference's numerics) on cpu")
    engine_dir: str | None = setting("DDA_ENGINE_DIR", "", optional, "TensorRT engines searched before MODEL/engines/ (a writable cache per GPU type)")
    backend: Backend = setting("DDA_BACKEND", "auto", choice(*BACKENDS), "inference backend")
    compile: bool = setting("DDA_COMPILE", "off", switch,
                            "torch.compile the network for batch buckets 8, 16, ... DDA_MAX_BATCH, each compiled at start (CUDA graphs on cuda)")
    consumers: int = setting("DDA_CONSUMERS", "1", positive_int,
                             "consumer processes sharing one engine process (Kafka only); 1: one process does everything")
    engine_socket: str | None = setting("DDA_ENGINE_SOCKET", "", optional,
                                        "score through the engine process at this Unix socket instead of loading the model (set by the pod for its consumers)")
    max_batch: int = setting("DDA_MAX_BATCH", "32", positive_int, "micro-batch size limit")
    max_wait_ms: int = setting("DDA_MAX_WAIT_MS", "20", non_negative_int, "how long a partial batch waits for more images")
    max_in_flight: int = setting("DDA_MAX_IN_FLIGHT", "256", positive_int, "requests in the pipeline before partitions are paused")
    fetch_workers: int = setting("DDA_FETCH_WORKERS", "32", positive_int, "concurrent fetches")
    decode_workers: int = setting("DDA_DECODE_WORKERS", str(max(1, (os.cpu_count() or 2) - 1)), positive_int, "decode/hash processes (a pod's total, split among its consumers)")
    fetch_allow_networks: tuple[IPNetwork, ...] = setting("DDA_FETCH_ALLOW_NETWORKS", "", parse_networks, "CIDRs exempt from the private-address block")
    fetch_timeout_s: float = setting("DDA_FETCH_TIMEOUT_S", "30", positive_float, "whole-request deadline per URL")
    fetch_max_bytes: int = setting("DDA_FETCH_MAX_BYTES", str(50 * 1024 * 1024), positive_int, "largest image body fetched (or local file read, in stdin mode)")
    fetch_retries: int = setting("DDA_FETCH_RETRIES", "2", non_negative_int, "retries for connect errors, 429 and 5xx")
    max_pixels: int = setting("DDA_MAX_PIXELS", "64000000", positive_int, "largest image decoded, in pixels")
    max_message_bytes: int = setting("DDA_MAX_MESSAGE_BYTES", "65536", positive_int, "larger input messages go to the dead-letter topic")
    metrics_host: str = setting("DDA_METRICS_HOST", "0.0.0.0", str, "address the endpoints listen on")
    metrics_port: int = setting("DDA_METRICS_PORT", "9400", port, "port of /metrics, /healthz, /readyz (0: off)")
    max_in_flight_bytes: int = setting("DDA_MAX_IN_FLIGHT_BYTES", str(1024 * 1024 * 1024), positive_int, "fetched image bytes held before fetching waits")
    decode_timeout_s: float = setting("DDA_DECODE_TIMEOUT_S", "30", positive_float, "one image's decode + hash; over it the decode process is killed")
    near_duplicates: str = setting("DDA_NEAR_DUPLICATES", "report", choice("report", "trusted"),
                                   "report: a PDQ match is reported and the image still scored; trusted: operator-confirmed matches answer unscored")
    provenance_policy: str = setting("DDA_PROVENANCE_POLICY", "report", choice(*POLICIES),
                                     "report: provenance beside the model's label; declared_ai: a valid C2PA manifest or XMP declaring AI sets label ai_generated; off: metadata not read")
    c2pa_trust_anchors: str | None = setting("DDA_C2PA_TRUST_ANCHORS", "", pem_certificates,
                                             "PEM file of root certificates whose C2PA signers count as trusted; unset: intact signatures report valid")
    decode_cpu_s: int = setting("DDA_DECODE_CPU_S", "8", positive_int, "CPU seconds one decode may use; over it its process ends (decode_limit)")
    decode_memory_mb: int = setting("DDA_DECODE_MEMORY_MB", "1536", positive_int,
                                    "memory one decode process may add to what it maps at start; raise with DDA_MAX_PIXELS")
    kafka_max_request_bytes: int = setting("DDA_KAFKA_MAX_REQUEST_BYTES", "1048576", positive_int, "largest record the producer sends (keep <= the topics' max.message.bytes)")
    revoke_timeout_s: float = setting("DDA_REVOKE_TIMEOUT_S", "2", positive_float, "on a rebalance, how long revoked partitions' work may finish and be acknowledged")
    publish_stall_s: float = setting("DDA_PUBLISH_STALL_S", "20", positive_float,
                                     "broker reachable, records waiting, none acknowledged this long: a new producer resends them "
                                     "(/readyz false from 3/4 of it; exit 1 at 2.5 times it)")
    lag_every_s: float = setting("DDA_LAG_EVERY_S", "10", positive_float, "how often dda_consumer_lag is refreshed from the broker's offsets")
    drain_timeout_s: float = setting("DDA_DRAIN_TIMEOUT_S", "25", positive_float, "on SIGTERM, how long in-flight work may finish")
    log_level: str = setting("DDA_LOG_LEVEL", "info", choice(*LEVELS), "log level")

    def member_slot(self) -> str:
        """The stable name of this worker (exactly_once): the host name unless DDA_INSTANCE_ID says."""
        return self.instance_id or socket.gethostname()

    def kafka_client_options(self) -> dict[str, Any]:
        """Security passthrough for kafka-python clients."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        for key, value in (("sasl_mechanism", self.kafka_sasl_mechanism), ("sasl_plain_username", self.kafka_sasl_username),
                           ("sasl_plain_password", self.kafka_sasl_password), ("ssl_cafile", self.kafka_ssl_cafile),
                           ("ssl_certfile", self.kafka_ssl_certfile), ("ssl_keyfile", self.kafka_ssl_keyfile)):
            if value:
                options[key] = value
        return options


def _settings() -> list[tuple[str, Setting]]:
    return [(f.name, f.metadata["setting"]) for f in fields(WorkerConfig)]


def environment(config: WorkerConfig, **overrides: Any) -> dict[str, str]:
    """Every setting as the DDA_* text `load` parses back to the same value: how a pod hands its whole
    configuration (flags included) to its consumer processes, with `overrides` for what is theirs."""
    values = {**{f.name: getattr(config, f.name) for f in fields(config)}, **overrides}
    return {s.env: _text(s, values[name]) for name, s in _settings()}


def _text(s: Setting, value: Any) -> str:
    if value is None:  # unset: whichever spelling this setting parses as unset
        return next(text for text in (s.default, "", "off") if _unset(s, text))
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _unset(s: Setting, text: str) -> bool:
    try:
        return s.parse(text) is None
    except (ValueError, argparse.ArgumentTypeError):
        return False


# --help shows the settings in these groups, in this order (a test checks that each is in exactly one).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka", ("kafka_bootstrap", "input_topic", "output_topic", "dlq_topic", "group_id", "kafka_security_protocol",
               "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile", "kafka_ssl_certfile",
               "kafka_ssl_keyfile", "kafka_connect_timeout_s", "session_timeout_ms", "revoke_timeout_s", "kafka_max_request_bytes",
               "max_message_bytes", "publish_stall_s", "lag_every_s", "delivery", "instance_id", "static_membership",
               "transaction_interval_ms")),
    ("model and engine", ("model", "shadow_model", "shadow_fraction", "second_model", "ensemble", "device", "backend", "precision", "compile", "engine_dir",
                          "consumers", "engine_socket", "max_batch", "max_wait_ms")),
    ("fetching", ("fetch_workers", "fetch_timeout_s", "fetch_retries", "fetch_max_bytes", "fetch_allow_networks", "max_in_flight",
                  "max_in_flight_bytes")),
    ("decoding and provenance", ("decode_workers", "max_pixels", "decode_timeout_s", "decode_cpu_s", "decode_memory_mb",
                                 "provenance_policy", "c2pa_trust_anchors")),
    ("cache", ("redis_url", "redis_cluster", "cache_ttl_s", "near_duplicates", "near_index_max_hashes")),
    ("operations", ("metrics_host", "metrics_port", "drain_timeout_s", "log_level")),
)
HIDDEN = {"engine_socket"}  # set by a pod for its consumer processes, never by hand
_UNIT_METAVARS = (("_ms", "MS"), ("_s", "SECONDS"), ("_bytes", "BYTES"), ("_mb", "MB"), ("_topic", "TOPIC"), ("_url", "URL"),
                  ("file", "FILE"), ("_networks", "CIDRS"), ("_anchors", "PEM"), ("port", "PORT"), ("bootstrap", "HOST:PORT,..."),
                  ("model", "DIR"), ("_dir", "DIR"), ("_id", "ID"), ("_host", "HOST"), ("mechanism", "NAME"), ("username", "NAME"),
                  ("password", "SECRET"))


def _metavar(name: str, s: Setting) -> str:
    allowed = getattr(s.parse, "allowed", None)
    if allowed:
        return "{" + ",".join(allowed) + "}"
    for suffix, metavar in _UNIT_METAVARS:
        if name.endswith(suffix):
            return metavar
    return "N" if s.parse in (positive_int, non_negative_int) else "VALUE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, grouped, with its environment variable and default."""
    settings = dict(_settings())
    for title, names in GROUPS:
        group = parser.add_argument_group(title)
        for name in names:
            s = settings[name]
            text = argparse.SUPPRESS if name in HIDDEN else f"{s.help} [{s.env}; default: {s.default or 'unset'}]"
            group.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=_metavar(name, s), help=text)


def load(env: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> WorkerConfig:
    """Flags over environment over defaults; every value parsed, the first bad one reported."""
    values: dict[str, Any] = {}
    for name, s in _settings():
        flag = (flags or {}).get(name)
        raw = flag if flag is not None else env.get(s.env, s.default)
        try:
            values[name] = s.parse(str(raw))
        except (ValueError, argparse.ArgumentTypeError) as exc:
            source = f"--{name.replace('_', '-')}" if flag is not None else s.env
            raise ConfigError(f"{source}={raw!r}: {exc}") from exc
    config = WorkerConfig(**values)
    if config.kafka_security_protocol.startswith("SASL") and not config.kafka_sasl_mechanism:
        raise ConfigError("DDA_KAFKA_SECURITY_PROTOCOL is SASL_* but DDA_KAFKA_SASL_MECHANISM is not set")
    if config.max_message_bytes * 8 > config.kafka_max_request_bytes:
        raise ConfigError(f"DDA_MAX_MESSAGE_BYTES={config.max_message_bytes} must be at most 1/8 of DDA_KAFKA_MAX_REQUEST_BYTES="
                          f"{config.kafka_max_request_bytes}: a verdict echoes the request's id, url and metadata")
    if config.revoke_timeout_s * 2 > config.session_timeout_ms / 1000:
        raise ConfigError(f"DDA_REVOKE_TIMEOUT_S={config.revoke_timeout_s:g} must be at most half the session timeout "
                          f"({config.session_timeout_ms} ms): the rebalance waits for it")
    if config.consumers > 1 and not config.kafka_bootstrap:
        raise ConfigError(f"DDA_CONSUMERS={config.consumers} needs DDA_KAFKA_BOOTSTRAP: stdin has one reader")
    if config.delivery == "exactly_once" and not config.kafka_bootstrap:
        raise ConfigError("DDA_DELIVERY=exactly_once needs DDA_KAFKA_BOOTSTRAP: transactions are Kafka's")
    if config.consumers > 1 and config.engine_socket:
        raise ConfigError("DDA_CONSUMERS > 1 starts its own engine process; unset DDA_ENGINE_SOCKET")
    if config.input_topic in (config.output_topic, config.dlq_topic):
        raise ConfigError("the input topic must differ from the output and dead-letter topics")
    if bool(config.ensemble) != bool(config.second_model):
        raise ConfigError("DDA_ENSEMBLE (a combiner file) and DDA_SECOND_MODEL go together: the combiner needs the second model's logit")
    if config.ensemble and config.shadow_model:
        raise ConfigError("DDA_ENSEMBLE and DDA_SHADOW_MODEL cannot be combined yet: a shadow is compared with DDA's own "
                          "verdict, and the ensemble's verdict is the combiner's")
    return config
