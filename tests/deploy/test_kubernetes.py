"""``deploy/kubernetes/``: the Kubernetes schemas, and every manifest held to the real server.

Each object is validated against the official schemas (``kubernetes-validate`` ships them, so this
runs offline) in strict mode, which also rejects a misspelt field, for the oldest and newest
Kubernetes versions it supports here (1.30: the preStop ``sleep`` action is on by default from it).
Then the manifests are checked against the code: setting names and values through the server's own
config loader, probe paths through the app's routes, the HPA's metrics through the ``/metrics`` of
a real server on the tiny model, the drain time through the settings the pods run with.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import deploy_checks as dc
from tests.server_process import running
from tts_server.app import _CUT_SETTLE_S
from tts_server.config import ServerConfig

# The oldest version the manifests support, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# docs/RELIABILITY.md: keep --shutdown-grace ~10 s under the supervisor's kill timeout.
DRAIN_HEADROOM_S = 10.0
# docs/PERFORMANCE.md: /ready after 45 s on an empty kernel cache (H100, 128 slots); the startup
# probe must allow several times that (slow model storage, a LoRA warm-up pass, a busier node).
COLD_START_S = 45.0
STARTUP_BUDGET_FACTOR = 4


@pytest.fixture(scope="module")
def live(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of a real ``python -m tts_server`` on the tiny model (CPU), ready."""
    log = tmp_path_factory.mktemp("k8s") / "server.log"
    with running(tiny_v1, log) as server, server.client() as client:
        yield client


@pytest.fixture(scope="module")
def exported(live: httpx.Client) -> set[str]:
    """Every sample name the real server's /metrics exports."""
    response = live.get("/metrics")
    assert response.status_code == 200, response.text
    return {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}


def _deployment() -> dc.Manifest:
    return dc.only("Deployment")


def _pod_config() -> ServerConfig:
    """The server config the pods run with (ConfigMap + Secret through envFrom, the real loader)."""
    return dc.effective_config(dc.pod_environment(_deployment(), dc.manifests()))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    """Strict schema validation of every object, the adapter's ConfigMap and the generated Secret included."""
    objects = [*dc.manifests().values(), *dc.load_yaml_docs(dc.ADAPTER_RULES)]
    for obj in objects:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label} at {'.'.join(map(str, exc.path))}: {exc.message}")


def test_schema_validation_catches_typos_and_wrong_types() -> None:
    """The schema check can fail: a misspelt probe field and a port given as a string are rejected."""
    for path, value in ((("readinessProbe", "periodSecond"), 5), (("ports", 0, "containerPort"), "8000")):
        broken = copy.deepcopy(_deployment())
        node = dc.container(broken)
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_and_keeps_the_keys_out_of_git() -> None:
    """Every YAML file of the folder is applied by ``-k``; the key file is git-ignored and has an example."""
    kustomization = dc.kustomization()
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    files = {p.name for p in dc.K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == dc.only("Namespace")["metadata"]["name"]
    (generator,) = kustomization["secretGenerator"]
    (env_file,) = generator["envs"]
    assert (dc.K8S / f"{env_file}.example").is_file()
    assert env_file in (dc.K8S / ".gitignore").read_text().split()
    image = dc.container(_deployment())["image"].split(":")[0]
    assert {i["name"] for i in kustomization.get("images", [])} <= {image}


def test_configmap_and_secret_keys_are_real_settings() -> None:
    """Every key the pods get is a ``TTS_*`` setting; the keys are in the Secret and only there."""
    configmap = dc.only("ConfigMap")["data"]
    secret = dc.only("Secret")["stringData"]
    assert dc.unknown_settings(configmap) == []
    assert dc.unknown_settings(secret) == []
    assert dc.misplaced_secrets(configmap) == []
    assert set(secret) == dc.secret_setting_names(), "the Secret should carry every key setting, and only those"


def test_a_wrong_variable_name_in_the_configmap_is_caught() -> None:
    """The check can fail: a misspelt key (which the server would ignore) and a key in the ConfigMap."""
    data = {**dc.only("ConfigMap")["data"], "TTS_MAX_NUM_SEQ": "64", "TTS_API_KEY": "k"}
    assert dc.unknown_settings(data) == ["TTS_MAX_NUM_SEQ"]
    assert dc.misplaced_secrets(data) == ["TTS_API_KEY"]


def test_the_pods_settings_load_through_the_servers_own_loader() -> None:
    """ConfigMap + Secret give a config the server accepts, on one GPU, with the documented paths."""
    deployment = _deployment()
    refs = {next(iter(src.values()))["name"] for src in dc.container(deployment)["envFrom"]}
    assert refs == {dc.only("ConfigMap")["metadata"]["name"], dc.only("Secret")["metadata"]["name"]}
    config = _pod_config()
    assert config.host == "0.0.0.0"
    limits = dc.container(deployment)["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1 == len(config.device_list), "one replica = one GPU = one engine"
    assert config.device_list[0].startswith("cuda")


def test_resources_request_one_gpu_cpu_and_memory_and_leave_replicas_to_the_hpa() -> None:
    """GPU in limits (requests equal if given), CPU and memory requested; no ``replicas`` to fight the HPA."""
    deployment = _deployment()
    resources = dc.container(deployment)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "replicas" not in deployment["spec"]


def test_probes_use_routes_of_the_real_app_on_the_server_port() -> None:
    """startup and readiness on /ready, liveness on /health: paths the app serves, on the port it listens on."""
    box = dc.container(_deployment())
    port = _pod_config().port
    assert dc.probe_problems(box, dc.app_routes(), port) == []
    assert box["startupProbe"]["httpGet"]["path"] == box["readinessProbe"]["httpGet"]["path"] == "/ready"
    # Not /ready: it turns 503 on SIGTERM, and a liveness failure would kill the pod mid-drain.
    assert box["livenessProbe"]["httpGet"]["path"] == "/health"


def test_the_probe_check_catches_a_wrong_path_or_port() -> None:
    """The check can fail: a path the app does not serve and a port the server does not listen on."""
    box = copy.deepcopy(dc.container(_deployment()))
    box["livenessProbe"]["httpGet"]["path"] = "/healthz"
    box["readinessProbe"]["httpGet"]["port"] = 8080
    del box["startupProbe"]
    problems = dc.probe_problems(box, dc.app_routes(), _pod_config().port)
    assert len(problems) == 3, problems
    with pytest.raises(AssertionError, match="named port"):
        dc.resolve_port(box, "metrics")


def test_probe_paths_answer_200_on_a_real_server(live: httpx.Client) -> None:
    """Once ready, every probe path answers 200, and the scrape path serves Prometheus text."""
    box = dc.container(_deployment())
    for name in dc.PROBES:
        path = box[name]["httpGet"]["path"]
        assert live.get(path).status_code == 200, path
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    response = live.get(annotations["prometheus.io/path"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")


def test_ports_agree_everywhere() -> None:
    """Container port = server port (pod settings) = Service target = scrape annotation."""
    deployment, service = _deployment(), dc.only("Service")
    box = dc.container(deployment)
    port = _pod_config().port
    assert [p["containerPort"] for p in box["ports"]] == [port]
    for service_port in service["spec"]["ports"]:
        assert dc.resolve_port(box, service_port["targetPort"]) == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] in dc.app_routes()


def test_selectors_pick_the_deployments_pods() -> None:
    """Service, PDB and HPA all point at the Deployment and its pods' labels."""
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dc.only("Service")["spec"]["selector"].items() <= labels.items()
    assert dc.only("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = dc.only("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_hpa_scales_on_metrics_the_real_server_exports(exported: set[str]) -> None:
    """Each HPA metric is served by a prometheus-adapter rule whose series the real /metrics exports."""
    hpa = dc.only("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    served = dc.adapter_metrics(dc.adapter_rules())
    assert dc.hpa_metric_problems(hpa, exported, served) == []
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_the_hpa_check_catches_a_metric_the_server_does_not_export(exported: set[str]) -> None:
    """The check can fail: a metric no rule serves, and a rule over a series the server lacks."""
    hpa = copy.deepcopy(dc.only("HorizontalPodAutoscaler"))
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "tts_queue_length"
    served = {**dc.adapter_metrics(dc.adapter_rules()), "tts_queue_depth": "tts_queue_depth_total"}
    problems = dc.hpa_metric_problems(hpa, exported, served)
    assert [p.split(":")[0] for p in problems] == ["tts_queue_length", "tts_queue_depth"], problems


def test_the_slot_target_is_below_the_pods_slot_count() -> None:
    """The active-streams target is a share of TTS_MAX_NUM_SEQS: at or above it the HPA would never scale up."""
    slots = _pod_config().inference_slots
    for metric in dc.only("HorizontalPodAutoscaler")["spec"]["metrics"]:
        if metric["pods"]["metric"]["name"] == "tts_active_streams":
            target = float(metric["pods"]["target"]["averageValue"])
            assert 0 < target < slots, f"target {target} vs {slots} slots per pod"
            break
    else:
        pytest.fail("the HPA does not scale on slot use (tts_active_streams)")


def test_termination_grace_covers_the_drain() -> None:
    """terminationGracePeriodSeconds > preStop sleep + the pods' --shutdown-grace + the server's exit."""
    deployment = _deployment()
    box = dc.container(deployment)
    grace = float(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    prestop = dc.prestop_seconds(box)
    assert prestop > 0, "a preStop sleep lets the endpoint removal spread before the server refuses work"
    assert _CUT_SETTLE_S < DRAIN_HEADROOM_S, "the server's own exit after the grace must fit the headroom"
    assert dc.drain_problems(grace, prestop, _pod_config().shutdown_grace, DRAIN_HEADROOM_S) == []


def test_the_drain_check_catches_a_grace_period_that_is_too_short() -> None:
    """The check can fail: Kubernetes' default 30 s with a 25 s drain after a 5 s preStop."""
    assert dc.drain_problems(30, 5, 25, DRAIN_HEADROOM_S)
    assert dc.prestop_seconds({"lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 7"]}}}}) == 7
    # Without TTS_SHUTDOWN_GRACE in the ConfigMap the server's default applies, read from the code.
    environ = {k: v for k, v in dc.pod_environment(_deployment(), dc.manifests()).items() if k != "TTS_SHUTDOWN_GRACE"}
    assert dc.effective_config(environ).shutdown_grace == dc.effective_config({"TTS_MODEL": "/m"}).shutdown_grace


def test_startup_probe_covers_a_cold_start() -> None:
    """The startup probe waits several cold starts (empty kernel cache) before the kubelet restarts the pod."""
    probe = dc.container(_deployment())["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= STARTUP_BUDGET_FACTOR * COLD_START_S, budget
    # Readiness reacts within seconds once up (a draining or dead pod leaves the Service quickly).
    readiness = dc.container(_deployment())["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 15


def test_volumes_hold_the_model_kernel_cache_voices_and_shared_memory() -> None:
    """Mounts at the paths the pods' settings name; the kernel cache is also the image's volume."""
    deployment = _deployment()
    config = _pod_config()
    mounts = {m["mountPath"]: m for m in dc.container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert config.kernel_cache_dir in mounts and config.kernel_cache_dir in dc.image().volumes
    assert config.voices_dir in mounts and config.voices_dir in dc.image().volumes
    model_mounts = [m for path, m in mounts.items() if config.model.startswith(path.rstrip("/") + "/")]
    assert model_mounts and model_mounts[0].get("readOnly") is True, f"{config.model} is not on a read-only mount"
    claim = volumes[model_mounts[0]["name"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in dc.manifests()
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory", "the engine's audio ring needs more than the runtime's 64 MB /dev/shm"
