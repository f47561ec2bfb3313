# syntax=docker/dockerfile:1
# The GPU image of the VoxCPM TTS server: `python -m tts_server` on the CUDA build of torch.
#
# Build from the repository root (the context is the repo; .dockerignore lets only the package in):
#   docker build -t voxcpm-tts:0.1.0 .
# Run on one GPU (the NVIDIA Container Toolkit brings the GPU and its driver into the container):
#   docker run --gpus 1 -p 8000:8000 --shm-size 1g -v /srv/models:/models:ro \
#       -v voxcpm-kernels:/var/cache/tts/kernels -e TTS_MODEL=/models/VoxCPM1.5 voxcpm-tts:0.1.0
# Every server flag is also a TTS_* variable (README, "Settings"). Kubernetes: deploy/kubernetes/.
# tests/deploy/test_dockerfile.py lints this file (hadolint) and checks it against the code and the manifests.

# CUDA 13.0 to match the torch build below (+cu130, the GPU machine's torch 2.11 + triton 3.6);
# the host needs an NVIDIA driver >= 580. "runtime", not "devel": torch's wheels bring their own
# CUDA libraries, and Triton ships its own ptxas.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-dev and gcc are runtime needs, not build leftovers: Triton compiles its small C launcher
# against Python.h the first time a kernel runs (then keeps it in the kernel cache below).
# tini is PID 1: it forwards SIGTERM to the server (which drains) and reaps orphans.
# Versions are not pinned: Ubuntu's archive keeps only the newest build of a package in a release,
# so a pin would break the build at the next security update; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev tini \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04's Python is externally managed (PEP 668): the server lives in a venv of its own.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CUDA build of torch first, in a layer of its own (GBs; changes far less often than the code).
# torch 2.11 is inside pyproject's range (torch>=2.5,<3) and needs exactly triton 3.6.0.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu130 \
        torch==2.11.0+cu130 triton==3.6.0

# The package with its GPU extra (a regular install, so nothing at run time reads /tmp/src).
COPY pyproject.toml README.md /tmp/src/
COPY voxcpm_engine/ /tmp/src/voxcpm_engine/
COPY tts_server/ /tmp/src/tts_server/
COPY perf/ /tmp/src/perf/
RUN pip install --no-cache-dir "/tmp/src[gpu]" && rm -rf /tmp/src

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --gid 10001 tts \
    && useradd --uid 10001 --gid tts --create-home --home-dir /home/tts --shell /usr/sbin/nologin tts \
    && mkdir -p /var/cache/tts/kernels /var/lib/tts/voices \
    && chown -R tts:tts /var/cache/tts /var/lib/tts

# Server settings for a container: listen on every interface, keep compiled kernels and stored
# voices in volumes. A restart that finds its kernels starts in about half the time (README).
# The model has no default: set TTS_MODEL to a checkpoint directory (mounted read-only).
ENV TTS_HOST=0.0.0.0 \
    TTS_PORT=8000 \
    TTS_KERNEL_CACHE_DIR=/var/cache/tts/kernels \
    TTS_VOICES_DIR=/var/lib/tts/voices
VOLUME ["/var/cache/tts/kernels", "/var/lib/tts/voices"]

USER 10001:10001
WORKDIR /var/lib/tts
EXPOSE 8000

# For `docker run` and compose (Kubernetes ignores it: its probes in deploy/kubernetes/ do this).
# /ready is 200 only once the engine is warm and the server is not draining; the start period
# covers a start on an empty kernel cache with room to spare (45 s on an H100 at 128 slots).
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('TTS_PORT', '8000'), timeout=4)"]

# SIGTERM drains: /ready turns 503, work in flight gets --shutdown-grace seconds, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "tts_server"]
