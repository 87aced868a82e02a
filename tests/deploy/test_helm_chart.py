"""The Helm chart, rendered offline (helm-python-sdk) and validated against Kubernetes schemas."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from worker import config as worker_config
from worker.config import _settings

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dda-worker"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
VALUES_EXAMPLES = [p for p in EXAMPLES if "kind" not in yaml.safe_load(p.read_text())]  # the rest are plain manifests
KUBE_VERSION = "1.35.0"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}  # not in the Kubernetes schemas
FROM_SECRETS = {"DDA_REDIS_URL", "DDA_KAFKA_SASL_USERNAME", "DDA_KAFKA_SASL_PASSWORD", "DDA_KAFKA_SSL_CAFILE",
                "DDA_KAFKA_SSL_CERTFILE", "DDA_KAFKA_SSL_KEYFILE", "DDA_C2PA_TRUST_ANCHORS"}  # from Secrets or mounted files

EVERYTHING_ON: dict[str, Any] = {
    "gpu": {"enabled": True, "count": 1},
    "keda": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {"enabled": True, "kafka": {"cidrs": ["10.20.0.0/24"]}, "redis": {"cidrs": ["10.30.0.0/24"]}},
    "secrets": {"redis": {"existingSecret": "dda-redis"}, "kafkaSasl": {"existingSecret": "dda-kafka-sasl"},
                "kafkaTls": {"existingSecret": "dda-kafka-tls", "certKey": "tls.crt", "keyKey": "tls.key"}},
    "worker": {"kafkaSecurityProtocol": "SASL_SSL", "kafkaSaslMechanism": "SCRAM-SHA-512"},
    "c2paTrust": {"configMap": "c2pa-trust-list"},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name="mod", namespace="trust-safety", is_install=True)
    docs = []
    for path, text in manifests.items():
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in kinds(docs)["Deployment"]["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")


@pytest.mark.parametrize("values", [None, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_lint_strict_and_every_manifest_validates(values: dict[str, Any] | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report
    docs = render(values)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    expected = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    if values:
        expected |= CRD_KINDS | {"NetworkPolicy", "ConfigMap"}
    assert expected <= set(kinds(docs))
    assert values or not {"ConfigMap", "PrometheusRule"} & set(kinds(docs))  # the operator's kit is off by default


def test_operator_kit_renders_the_dashboard_and_rules_as_shipped() -> None:
    docs = kinds(render(EVERYTHING_ON))
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["dda-worker.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    rule = docs["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())


def test_gpu_limit_probes_and_drain_grace() -> None:
    docs = render(EVERYTHING_ON)
    pod = kinds(docs)["Deployment"]["spec"]["template"]["spec"]
    container = worker_container(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    metrics_port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    assert metrics_port == 9400
    # The probe paths are the worker's real endpoints (worker/endpoints.py).
    endpoints = (Path(__file__).resolve().parents[2] / "worker" / "endpoints.py").read_text()
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
        assert f'"{path}"' in endpoints
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    assert pod["terminationGracePeriodSeconds"] == 25 + 15
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu_only = render({"gpu": {"enabled": False}, "engine": {"mode": "none"}, "worker": {"device": "cpu"}})
    assert "nvidia.com/gpu" not in worker_container(cpu_only)["resources"].get("limits", {})


def test_every_worker_setting_reaches_the_container_environment() -> None:
    settings = {s.env for _, s in _settings()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    from_values = {f"DDA_{''.join('_' + c if c.isupper() else c for c in k).upper()}" for k in values["worker"]}
    assert from_values == settings - FROM_SECRETS, "values.yaml worker keys and worker/config.py settings differ"
    env = {e["name"]: e for e in worker_container(render(EVERYTHING_ON))["env"]}
    assert settings <= set(env)
    overridden = worker_container(render({"worker": {"maxBatch": 12, "fetchAllowNetworks": "10.9.0.0/16"}}))
    env2 = {e["name"]: e.get("value") for e in overridden["env"]}
    assert env2["DDA_MAX_BATCH"] == "12" and env2["DDA_FETCH_ALLOW_NETWORKS"] == "10.9.0.0/16"


def test_c2pa_trust_anchors_come_from_a_mounted_config_map() -> None:
    docs = render(EVERYTHING_ON)
    pod = kinds(docs)["Deployment"]["spec"]["template"]["spec"]
    container = worker_container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "c2pa-trust")
    assert env["DDA_C2PA_TRUST_ANCHORS"] == f"{mount['mountPath']}/anchors.pem" and mount["readOnly"] is True
    assert {"name": "c2pa-trust", "configMap": {"name": "c2pa-trust-list"}} in pod["volumes"]
    assert "DDA_C2PA_TRUST_ANCHORS" not in {e["name"] for e in worker_container(render())["env"]}


def test_a_shadow_model_is_mounted_read_only_from_the_model_claim() -> None:
    values = {"worker": {"shadowModel": "/models/candidate", "shadowFraction": 0.25}, "model": {"shadowSubPath": "dda-2027-01"}}
    container = worker_container(render(values))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DDA_SHADOW_MODEL"] == "/models/candidate" and env["DDA_SHADOW_FRACTION"] == "0.25"
    assert {"name": "models", "mountPath": "/models/candidate", "subPath": "dda-2027-01", "readOnly": True} in container["volumeMounts"]
    assert sum(m["name"] == "models" for m in worker_container(render())["volumeMounts"]) == 1  # no shadow: one mount


def test_a_second_model_and_its_combiner_come_from_the_model_claim() -> None:
    values = {"worker": {"secondModel": "/models/commfor", "ensemble": "/models/commfor/combiner.json"},
              "model": {"secondSubPath": "commfor-384"}}
    container = worker_container(render(values))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DDA_SECOND_MODEL"] == "/models/commfor" and env["DDA_ENSEMBLE"] == "/models/commfor/combiner.json"
    assert {"name": "models", "mountPath": "/models/commfor", "subPath": "commfor-384", "readOnly": True} in container["volumeMounts"]
    assert {e["name"]: e.get("value") for e in worker_container(render())["env"]}["DDA_ENSEMBLE"] == "off"


def test_secrets_are_referenced_never_inlined() -> None:
    docs = render(EVERYTHING_ON)
    env = {e["name"]: e for e in worker_container(docs)["env"]}
    for name, secret in (("DDA_REDIS_URL", "dda-redis"), ("DDA_KAFKA_SASL_PASSWORD", "dda-kafka-sasl")):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
    assert not any(d["kind"] == "Secret" for d in docs)
    volumes = kinds(docs)["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "kafka-tls", "secret": {"secretName": "dda-kafka-tls"}} in volumes
    trigger_auth = kinds(docs)["TriggerAuthentication"]["spec"]["secretTargetRef"]
    assert {r["name"] for r in trigger_auth} == {"dda-kafka-sasl", "dda-kafka-tls"}


def test_keda_scales_on_lag_and_hpa_is_the_fallback() -> None:
    scaled = kinds(render(EVERYTHING_ON))["ScaledObject"]["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == "dda-worker"
    assert trigger["metadata"]["topic"] == "dda.requests"
    fallback = kinds(render({"autoscaling": {"enabled": True}}))
    assert "HorizontalPodAutoscaler" in fallback and "ScaledObject" not in fallback
    assert "replicas" not in fallback["Deployment"]["spec"]
    assert "HorizontalPodAutoscaler" not in kinds(render(EVERYTHING_ON | {"autoscaling": {"enabled": True}}))


def test_network_policy_denies_internal_ranges_but_allows_kafka_and_redis() -> None:
    policy = kinds(render(EVERYTHING_ON))["NetworkPolicy"]["spec"]
    blocks = [to["ipBlock"] for rule in policy["egress"] for to in rule.get("to", [])]
    internet = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    assert {"10.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"} <= set(internet["except"])
    assert {"cidr": "10.20.0.0/24"} in blocks and {"cidr": "10.30.0.0/24"} in blocks
    with pytest.raises(helm.HelmError, match="networkPolicy.kafka.cidrs"):
        render({"networkPolicy": {"enabled": True}})


@pytest.mark.parametrize(
    "bad",
    [{"worker": {"maxBatch": "64"}}, {"worker": {"maxBatch": 0}}, {"worker": {"device": "tpu"}}, {"worker": {"maxBatchSize": 8}},
     {"keda": {"enabled": "yes"}}, {"engine": {"precision": "int4"}}, {"secrets": {"redis": {"password": "hunter2"}}},
     {"replicaCount": -1}],
    ids=["string-for-int", "zero-batch", "bad-enum", "unknown-setting", "string-for-bool", "bad-precision", "inline-secret", "negative"],
)
def test_schema_rejects_wrong_values(bad: dict[str, Any]) -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema(chart.merge_values(copy.deepcopy(bad)))
    with pytest.raises(helm.HelmError):
        chart.render(bad, name="mod", namespace="x")


@pytest.mark.parametrize("cache", [{"type": "emptyDir"}, {"type": "pvc", "existingClaim": "dda-engines"}], ids=["emptyDir", "pvc"])
def test_engines_live_in_their_own_writable_volume_outside_the_read_only_model(cache: dict[str, str]) -> None:
    docs = kinds(render({"engine": {"mode": "build", "cache": cache}}))
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    env = {e["name"]: e.get("value") for e in worker_container([docs["Deployment"]])["env"]}
    engine_dir, model = env["DDA_ENGINE_DIR"], env["DDA_MODEL"]
    for container in (init, worker_container([docs["Deployment"]])):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[model]["readOnly"] and mounts[engine_dir]["name"] == "engines" and not mounts[engine_dir].get("readOnly")
        read_only = [path for path, m in mounts.items() if m.get("readOnly")]
        nested = [(p, ro) for p in mounts for ro in read_only if p != ro and p.startswith(ro.rstrip("/") + "/")]
        assert not nested, f"mounts inside read-only mounts need mountpoints the runtime cannot create: {nested}"
    volume = {v["name"]: v for v in spec["volumes"]}["engines"]
    assert volume.get("persistentVolumeClaim", {}).get("claimName") == cache.get("existingClaim")
    script = init["args"][0]
    assert script.index("dda find-engine") < script.index("||") < script.index("dda build-engine")
    assert f"--engine-dir {engine_dir}" in script and f"--output-dir {engine_dir}" in script


def test_prebuilt_engines_mount_the_cache_only_when_it_is_shared() -> None:
    plain = kinds(render({"engine": {"mode": "prebuilt", "cache": {"type": "emptyDir"}}}))["Deployment"]["spec"]["template"]["spec"]
    shared = kinds(render({"engine": {"mode": "prebuilt", "cache": {"type": "pvc", "existingClaim": "e"}}}))["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in plain and "engines" not in {v["name"] for v in plain["volumes"]}
    assert "initContainers" not in shared and "engines" in {v["name"] for v in shared["volumes"]}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("example", [None, *VALUES_EXAMPLES], ids=["defaults", *(p.stem for p in VALUES_EXAMPLES)])
def test_every_rendered_setting_is_accepted_by_the_worker_as_given(example: Path | None, tmp_path: Path) -> None:
    """Helm reads YAML numbers as floats: a default install once rendered DDA_FETCH_MAX_BYTES="5.24288e+07",
    which the worker refuses, so every pod crash-looped. Each rendered value goes through the worker's
    own parser and must mean what the values file says."""
    given = yaml.safe_load(example.read_text()) if example else {}
    docs = render(given)
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    worker = _merged(yaml.safe_load((CHART / "values.yaml").read_text()), given)["worker"]
    env = {e["name"]: e["value"] for e in worker_container(docs)["env"] if "value" in e}
    settings = dict(s for _, s in _settings() for s in [(s.env, s)])
    for key, value in worker.items():
        name = f"DDA_{''.join('_' + c if c.isupper() else c for c in key).upper()}"
        parse = settings[name].parse
        assert parse(env[name]) == parse(str(value)), (name, env[name], value)
    pem = tmp_path / "anchors.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    files = {name: str(pem) for name in env if name == "DDA_C2PA_TRUST_ANCHORS"}  # a mounted file, here a stand-in
    config = worker_config.load({**env, **files})
    assert config.fetch_max_bytes == worker["fetchMaxBytes"] and config.max_pixels == worker["maxPixels"]


@pytest.mark.parametrize("manifest", [p for p in EXAMPLES if p not in VALUES_EXAMPLES], ids=lambda p: p.stem)
def test_example_manifests_validate(manifest: Path) -> None:
    for doc in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
