"""Pre-flight checks of a run's params against its teacher model, before anything is computed.

Each task's check (`Task.preflight`, in flows/tasks/<task>.py) raises `ConfigError` when the teacher cannot
be used (a path that does not exist, a folder without safetensors weights, a hub id while the hub cannot be
reached and the id is not in the local Hugging Face cache) or when the student keeps layers the teacher
does not have (`distill.layers`, `lm.distill.layers`, and `search.layers` for a search). It reads only the
teacher's config.json, with the helpers here. `miniaturize run`, `stage` and `search` call it right after
loading the params, and exit with code 2; `data_source` checks `miniaturize run --data` the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.config import ConfigError
from components.kit.sources import ModelSourceError, hub_offline, resolve_model_source


def teacher_depth(key: str, name: str, root: Path) -> int | None:
    """Transformer layers of the teacher `name` (a path, relative to root or absolute, a packaged or hub id)
    by its config.json; None when the config does not say."""
    local = Path(root) / Path(name).expanduser()  # an absolute name stays as it is
    try:
        source = resolve_model_source(str(local) if local.exists() else name)
    except ModelSourceError as err:
        raise ConfigError(f"{key}: {err}") from None
    depth = local_depth(Path(source))
    if depth is not None:
        return depth
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=hub_offline())
    except OSError as err:
        raise ConfigError(f"{key}: {unreadable(source, err)}") from None
    except ValueError as err:  # e.g. a model_type this transformers does not know
        raise ConfigError(f"{key}: cannot read the config of {source}: {first_line(err)}") from None
    return getattr(config, "num_hidden_layers", None)


DEPTH_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")  # BERT-like, GPT-2, DistilBERT, T5


def local_depth(folder: Path) -> int | None:
    """The layer count a local model folder's config.json states, read as JSON: importing transformers (and
    torch with it) takes seconds, which a run whose stages are all cached, or that stops at validation, would
    spend on this check alone. None when the file is not there or names no layer count under DEPTH_KEYS."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "model_type" not in config:
        return None  # let transformers say what is wrong with it
    return next((config[k] for k in DEPTH_KEYS if isinstance(config.get(k), int)), None)


def unreadable(source: str, err: OSError) -> str:
    """Why transformers could not read the config of source, in one sentence."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    cause = err.__cause__
    if Path(source).exists():
        return f"cannot read {Path(source) / 'config.json'}: {first_line(err)}"
    if isinstance(cause, RepositoryNotFoundError):
        return f"{source!r} is not a model on the Hugging Face hub (or it is private or gated)"
    if (
        hub_offline()
        or isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled))
        or "couldn't connect" in str(err)
    ):
        why = (
            "the machine is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
            if hub_offline()
            else "there is no connection"
        )
        return (
            f"the Hugging Face hub cannot be reached ({why}) and {source!r} is not in the local Hugging Face "
            "cache; download it while online, or give the path of a local copy"
        )
    return f"cannot read the config of {source!r}: {first_line(err)}"


def require_layers(key: str, layers: list[int], depth: int | None, teacher: str) -> None:
    if not layers:
        raise ConfigError(f"{key} is empty: the student needs at least one teacher layer")
    if depth is not None and max(layers) >= depth:
        raise ConfigError(
            f"{key} {layers} asks for layer {max(layers)}, but the teacher {teacher} has {depth} "
            f"layers (0..{depth - 1})"
        )


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def data_source(data: str, root: Path) -> str:
    """The value `--data` gives the task's data source: a file of the project (it must exist and lie inside
    `root`: `components.kit.data.workspace_path`, a DataError otherwise), or a hub dataset id as it is."""
    from components.kit.data import workspace_path

    path = Path(data)
    if not path.exists() and path.suffix:  # a file name, not a hub dataset id
        raise ConfigError(f"data file {data} does not exist")
    return str(workspace_path(data, root, "--data")) if path.exists() else data
