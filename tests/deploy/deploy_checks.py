"""What the deployment files say, read from the files, and the checks that hold them to the code.

``Dockerfile`` (repo root), ``.dockerignore`` and ``deploy/kubernetes/`` are read here once; the
checks are plain functions that return a list of problems (empty: fine), so the tests can show
that each one catches a deliberately wrong input. Setting names, secrets, defaults and routes come
from the code itself (:class:`tts_server.config.ServerConfig`, :func:`tts_server.app.create_app`),
never from a copy.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

from tts_server.config import ServerConfig, env_of
from tts_server.config_sources import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
ADAPTER_RULES = K8S / "prometheus-adapter" / "configmap.yaml"

Manifest = dict[str, Any]


# --- the server's settings, from the code ---------------------------------------------------------


def setting_names() -> set[str]:
    """Every ``TTS_*`` variable the server reads (one per :class:`ServerConfig` field)."""
    return {env_of(f.name) for f in fields(ServerConfig)}


def secret_setting_names() -> set[str]:
    """The variables the config marks secret (API and admin keys)."""
    return {env_of(f.name) for f in fields(ServerConfig) if f.metadata["secret"]}


def unknown_settings(keys: Iterable[str]) -> list[str]:
    """Keys that are not a variable of the server (a typo would be ignored silently at run time)."""
    known = setting_names()
    return sorted(k for k in keys if k not in known)


def misplaced_secrets(configmap_keys: Iterable[str]) -> list[str]:
    """Secret settings given in a ConfigMap (readable by anyone who may read ConfigMaps)."""
    return sorted(set(configmap_keys) & secret_setting_names())


def effective_config(environ: Mapping[str, str]) -> ServerConfig:
    """The config a server started with this environment and no flags would run with.

    Raises:
        tts_server.config.ConfigError: A value the server would refuse at start.
    """
    return load_config([], environ)


def app_routes() -> set[str]:
    """The paths the real app serves (built without starting an engine: the routes exist up front)."""
    from tts_server.app import create_app

    return {route.path for route in create_app(ServerConfig(model="unused")).routes}


# --- the Dockerfile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """What the Dockerfile declares."""

    base: str
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    expose: list[int]
    volumes: list[str]
    user: str
    stopsignal: str
    healthcheck: str
    runs: list[str]
    copies: list[list[str]]


def _exec_form(value: str, instruction: str) -> list[str]:
    """An ENTRYPOINT/CMD in exec form (the JSON array); the shell form would put sh in front of the server."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{instruction} must be in exec form (a JSON array), got {value!r}") from exc
    assert isinstance(parsed, list), f"{instruction} must be a JSON array, got {value!r}"
    return [str(part) for part in parsed]


def parse_dockerfile(text: str) -> Image:
    """Read the instructions of a single-stage Dockerfile (the last one of each kind wins, as in Docker)."""
    parser = DockerfileParser(fileobj=None, cache_content=True)
    parser.content = text
    last: dict[str, str] = {}
    expose: list[int] = []
    volumes: list[str] = []
    runs: list[str] = []
    copies: list[list[str]] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        last[instruction] = value
        if instruction == "EXPOSE":
            expose += [int(port.split("/")[0]) for port in value.split()]
        elif instruction == "VOLUME":
            volumes += json.loads(value) if value.startswith("[") else value.split()
        elif instruction == "RUN":
            runs.append(value)
        elif instruction == "COPY":
            copies.append([part for part in shlex.split(value) if not part.startswith("--")])
    return Image(
        base=parser.baseimage,
        entrypoint=_exec_form(last.get("ENTRYPOINT", "[]"), "ENTRYPOINT"),
        cmd=_exec_form(last.get("CMD", "[]"), "CMD"),
        env=dict(parser.envs),
        expose=expose,
        volumes=volumes,
        user=last.get("USER", "root"),
        stopsignal=last.get("STOPSIGNAL", ""),
        healthcheck=last.get("HEALTHCHECK", ""),
        runs=runs,
        copies=copies,
    )


@cache
def image() -> Image:
    """The repository's Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text())


def image_settings(img: Image) -> dict[str, str]:
    """The image's ``TTS_*`` variables."""
    return {k: v for k, v in img.env.items() if k.startswith("TTS_")}


def image_command(img: Image) -> list[str]:
    """What the container runs: ENTRYPOINT followed by CMD."""
    return [*img.entrypoint, *img.cmd]


def dockerignore_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore``, in order (comments and blank lines dropped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern excludes a path when it matches the path or one of its parent folders."""
    pattern = pattern.strip("/")
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if fnmatch.fnmatchcase(prefix, pattern):
            return True
        # `**/x` also matches `x` at the top (Go's filepath.Match has no `**`; Docker adds it).
        if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix, pattern[3:]):
            return True
    return False


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative to the build context) is left out of the context; the last match wins."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _matches(pattern.lstrip("!"), path):
            excluded = not negated
    return excluded


# --- the Kubernetes manifests ---------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[Manifest]:
    """Every non-empty document of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def kustomization() -> Manifest:
    """``deploy/kubernetes/kustomization.yaml``."""
    return load_yaml_docs(K8S / "kustomization.yaml")[0]


def read_env_file(path: Path) -> dict[str, str]:
    """A ``KEY=value`` file as kustomize's generators read it (``#`` comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def generated_secret(generator: Manifest, env_file: Path) -> Manifest:
    """The Secret kustomize's ``secretGenerator`` makes from an env file (before its name gets the hash)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": generator["name"]},
        "stringData": read_env_file(env_file),
    }


@cache
def manifests() -> dict[tuple[str, str], Manifest]:
    """The objects ``kubectl apply -k deploy/kubernetes`` creates, by (kind, name); the Secret from the example."""
    found: dict[tuple[str, str], Manifest] = {}
    for resource in kustomization()["resources"]:
        for doc in load_yaml_docs(K8S / resource):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    for generator in kustomization().get("secretGenerator", []):
        (env_file,) = generator["envs"]
        secret = generated_secret(generator, K8S / f"{env_file}.example")
        found[("Secret", generator["name"])] = secret
    return found


def only(kind: str) -> Manifest:
    """The one object of a kind."""
    docs = [doc for (k, _), doc in manifests().items() if k == kind]
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def container(deployment: Manifest) -> Manifest:
    """The server container of a Deployment (the only one)."""
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


def pod_environment(deployment: Manifest, objects: Mapping[tuple[str, str], Manifest]) -> dict[str, str]:
    """The ``TTS_*`` variables the container runs with: the image's, then envFrom's, then its own ``env``."""
    environ = image_settings(image())
    box = container(deployment)
    for source in box.get("envFrom", []):
        if "configMapRef" in source:
            environ.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            secret = objects[("Secret", source["secretRef"]["name"])]
            environ.update(secret.get("stringData", {}))
    environ.update({e["name"]: e["value"] for e in box.get("env", []) if "value" in e})
    return environ


def resolve_port(box: Manifest, port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports)."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in box.get("ports", []) if "name" in p}
    if port not in named:
        raise AssertionError(f"port {port!r} is not a named port of container {box['name']}")
    return named[port]


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def probe_problems(box: Manifest, routes: set[str], port: int) -> list[str]:
    """Probes that are missing, use a path the app does not serve, or reach another port."""
    problems = []
    for name in PROBES:
        probe = box.get(name)
        if probe is None or "httpGet" not in probe:
            problems.append(f"{name}: missing or not an httpGet probe")
            continue
        get = probe["httpGet"]
        if get["path"] not in routes:
            problems.append(f"{name}: path {get['path']} is not a route of the app")
        if resolve_port(box, get["port"]) != port:
            problems.append(f"{name}: port {get['port']} is not the server's port {port}")
    return problems


def prestop_seconds(box: Manifest) -> float:
    """How long the preStop hook holds SIGTERM back (its sleep action or an exec of ``sleep N``)."""
    pre = box.get("lifecycle", {}).get("preStop")
    if pre is None:
        return 0.0
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join(command))
    return float(match.group(1)) if match else 0.0


def drain_problems(
    termination_grace_s: float, prestop_s: float, shutdown_grace_s: float, headroom_s: float
) -> list[str]:
    """Whether Kubernetes waits long enough before its SIGKILL for the whole drain to finish.

    The kubelet's clock starts with the preStop hook; the server gets SIGTERM after it, drains for
    ``--shutdown-grace`` and exits a moment later; ``headroom_s`` is the margin the docs ask for.
    """
    needed = prestop_s + shutdown_grace_s + headroom_s
    if termination_grace_s < needed:
        return [
            f"terminationGracePeriodSeconds {termination_grace_s:g} < preStop {prestop_s:g} s + shutdown grace "
            f"{shutdown_grace_s:g} s + headroom {headroom_s:g} s = {needed:g} s: the drain would be SIGKILLed"
        ]
    return []


def adapter_rules() -> list[Manifest]:
    """The prometheus-adapter rules (``config.yaml`` of its ConfigMap)."""
    (configmap,) = load_yaml_docs(ADAPTER_RULES)
    return yaml.safe_load(configmap["data"]["config.yaml"])["rules"]


def adapter_metrics(rules: list[Manifest]) -> dict[str, str]:
    """The custom-metrics name each rule serves, mapped to the Prometheus series it reads."""
    served: dict[str, str] = {}
    for rule in rules:
        series = re.match(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
        assert series, f"cannot read the metric name of {rule['seriesQuery']!r}"
        name = rule.get("name", {})
        # The adapter's `as` uses Go's ${1} for groups; Python's re.sub spells it \g<1>.
        replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", name.get("as", "${1}"))
        served[re.sub(name.get("matches", "^(.*)$"), replacement, series.group(1))] = series.group(1)
    return served


def hpa_metric_problems(hpa: Manifest, exported: set[str], served: Mapping[str, str]) -> list[str]:
    """HPA metrics that the adapter does not serve, or whose series the server does not export."""
    problems = []
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] != "Pods":
            problems.append(f"metric of type {metric['type']}: this deployment scales on per-pod server metrics")
            continue
        name = metric["pods"]["metric"]["name"]
        if name not in served:
            problems.append(f"{name}: no prometheus-adapter rule serves it")
        elif served[name] not in exported:
            problems.append(f"{name}: the server's /metrics has no series {served[name]}")
    return problems
