"""Deployment files, checked with real tools where the machine has them: kustomize renders
and kubernetes-validate, promtool, a real Prometheus scraping a live server, and the Grafana
dashboard's queries against the metrics the service really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _tool(name: str) -> str:
    """The tool's path; CI installs every one of them, so only a dev machine may skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return path


def _render(overlay: str) -> list[dict[str, Any]]:
    path = DEPLOY / "kubernetes/overlays" / overlay
    out = subprocess.run([_tool("kubectl"), "kustomize", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# Every overlay, and the image tag it deploys. gpu-servicemonitor adds the optional
# ServiceMonitor component, which the base leaves out so that it applies without the operator.
OVERLAYS = {"gpu": "gpu", "cpu": "cpu", "gpu-servicemonitor": "gpu"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_overlays_render_and_validate(overlay: str, tmp_path: Path) -> None:
    docs = _render(overlay)
    kinds = {d["kind"] for d in docs}
    base_kinds = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    monitored = overlay.endswith("-servicemonitor")
    assert kinds == (base_kinds | {"ServiceMonitor"} if monitored else base_kinds)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    validate = shutil.which("kubernetes-validate") or str(ROOT / ".venv/bin/kubernetes-validate")
    result = subprocess.run([validate, "--strict", "-k", "1.30.0", str(rendered)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    by_kind = {d["kind"]: d for d in docs}
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = pod["containers"][0]
    device = OVERLAYS[overlay]
    assert container["image"] == f"reranker:{device}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model download
    env = {e["name"]: e.get("value") for e in container["env"]}
    grace = float(env["RERANKER_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 10  # preStop pause + drain
    assert "preStop" in container["lifecycle"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == 1) == (device == "gpu")
    assert env["RERANKER_DEVICE"] == ("cuda" if device == "gpu" else "cpu")

    # The HPA owns the replica count: a `replicas` in the Deployment would reset it on every
    # re-apply.
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "reranker_in_flight_requests"

    service = by_kind["Service"]
    assert _selects(service["spec"]["selector"], pod_labels)
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    pdb = by_kind["PodDisruptionBudget"]["spec"]
    assert _selects(pdb["selector"]["matchLabels"], pod_labels)  # no selector guards no pod
    if monitored:
        monitor = by_kind["ServiceMonitor"]["spec"]
        assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        assert _selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])


def test_servicemonitor_is_an_optional_component() -> None:
    """Only overlays that name the component get the operator's kind; the base applies anywhere."""
    component = DEPLOY / "kubernetes/components/servicemonitor"
    assert yaml.safe_load((component / "kustomization.yaml").read_text())["kind"] == "Component"
    base = yaml.safe_load((DEPLOY / "kubernetes/base/kustomization.yaml").read_text())
    for resource in base["resources"]:
        doc = yaml.safe_load((DEPLOY / "kubernetes/base" / resource).read_text())
        assert not doc["apiVersion"].startswith("monitoring.coreos.com/"), resource


def test_promtool_accepts_config_and_rules() -> None:
    promtool = _tool("promtool")
    for args in (["check", "config", str(DEPLOY / "prometheus/compose.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus/alerts.yml")]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def _exported_names(server: LiveServer) -> set[str]:
    text = httpx.get(f"{server.url}/metrics").text
    names = set(re.findall(r"^# TYPE (\w+)", text, re.M))
    names |= set(re.findall(r"^(\w+)[{ ]", text, re.M))
    return names


def _queried_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(reranker_\w+)", expr))


def test_dashboard_and_alerts_query_only_exported_metrics(xlmr_server: LiveServer) -> None:
    exported = _exported_names(xlmr_server)
    dashboard = json.loads((DEPLOY / "grafana/dashboards/reranker.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 20
    for expr in exprs:
        names = _queried_names(expr)
        assert names, expr
        missing = {n for n in names if n not in exported}
        assert not missing, f"{expr} queries metrics the service does not export: {missing}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("latency", "queue wait", "batch size", "tokens", "padding", "queue depth",
                  "429", "gpu memory", "request rate"):
        assert topic in titles, topic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_prometheus_scrapes_a_live_server(xlmr_server: LiveServer) -> None:
    prometheus = _tool("prometheus")
    port = _free_port()
    target = xlmr_server.url.removeprefix("http://")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "reranker", "static_configs": [{"targets": [target]}]}],
        }))
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            api = f"http://127.0.0.1:{port}/api/v1/query"
            deadline = time.monotonic() + 60
            with xlmr_server.client() as client:
                while True:
                    for i in range(5):
                        client.post("/v1/rerank", json={"query": f"q{i}", "documents": ["a", "b"]})
                    try:
                        count = _query(api, 'sum(reranker_requests_total{route="/v1/rerank"})')
                        p99 = _query(api, "histogram_quantile(0.99, sum by (le) (rate("
                                     'reranker_request_duration_seconds_bucket{route="/v1/rerank"}'
                                     "[15s])))")
                        if count and count >= 10 and p99 is not None and p99 > 0:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "Prometheus never saw the traffic"
                    time.sleep(1)
            assert 0 < p99 < 10
        finally:
            proc.terminate()
            proc.wait(30)


def _query(api: str, promql: str) -> float | None:
    response = httpx.get(api, params={"query": promql})
    if response.status_code == 503:  # "Service Unavailable" until its storage is open
        return None
    response.raise_for_status()
    result = response.json()["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN before rate() has two samples


def test_compose_file_wires_the_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    gpu = services["reranker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["reranker-cpu"]["profiles"] == ["cpu"]
    assert services["reranker-cpu"]["build"]["target"] == "cpu"
    assert services["reranker"]["build"]["target"] == "gpu"
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_image_installs_the_project_like_the_readme() -> None:
    """Both go through scripts/bootstrap.sh: the Dockerfile directly, the README's two
    commands through scripts/serve.sh and scripts/test.sh."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RUN TORCH_BUILD=cuda scripts/bootstrap.sh" in dockerfile
    assert "RUN TORCH_BUILD=cpu scripts/bootstrap.sh" in dockerfile
    assert re.search(r'^ENTRYPOINT \["/app/\.venv/bin/reranker", "serve"\]', dockerfile, re.M)
    assert re.search(r"^USER reranker", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/ready" in dockerfile
    readme = (ROOT / "README.md").read_text()
    assert "scripts/serve.sh" in readme and "scripts/test.sh" in readme
    for script in ("serve.sh", "test.sh"):
        assert "scripts/bootstrap.sh" in (ROOT / "scripts" / script).read_text()
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()
