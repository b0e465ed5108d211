# syntax=docker/dockerfile:1
# GPU image the RayService runs (head, workers and the autoscaler sidecar): CUDA vLLM + NIXL + Ray Serve +
# pdserve, as the non-root user 1000 the pods' securityContext expects.
#   docker build -t ghcr.io/<org>/pdserve:0.1.0-cuda .
# RAY_VERSION must equal `kubernetes.ray_version` of the profiles (a unit test checks it).
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

ARG RAY_VERSION=2.60.0
ARG NIXL_VERSION=1.5.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/ray

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray

WORKDIR /opt/pdserve
# README.md is optional in the context; the wildcard keeps COPY from failing without it.
COPY pyproject.toml README.m[d] ./
COPY serving ./serving
# DL3013: `.[gpu]` is this package from the build context; its own dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir "ray[serve]==${RAY_VERSION}" "nixl==${NIXL_VERSION}" ".[gpu]" \
    && python3 -c "import ray, vllm, nixl, serving.app"

USER 1000:1000
WORKDIR /home/ray
# KubeRay sets the container command (`ray start ...`); drop the base image's `vllm serve` entrypoint.
ENTRYPOINT []
CMD ["pdserve", "--help"]
