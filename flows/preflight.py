"""Pre-flight checks of a run's params against its teacher model, before anything is computed.

`check(params, root)` raises `ConfigError` when the teacher cannot be used (a path that does not exist, a
folder without safetensors weights, a hub id while the hub cannot be reached and the id is not in the local
Hugging Face cache) or when the student keeps layers the teacher does not have (`distill.layers`,
`lm.distill.layers`, and `search.layers` with `search=True`). It reads only the teacher's config.json.
`miniaturize run`, `stage` and `search` call it right after loading the params, and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path

from components.config import ConfigError, Params
from components.kit.modeling import ModelSourceError, hub_offline, resolve_model_source


def check(params: Params, root: Path, search: bool = False) -> None:
    if params.task == "causal-lm":
        teacher = params.lm.teacher
        if teacher.init == "scratch":
            return  # nothing to read: the params check lm.distill.layers against architecture.n_layer
        depth = teacher_depth("lm.teacher.model", teacher.model, root)
        require_layers("lm.distill.layers", params.lm.distill.layers, depth, teacher.model)
        return
    depth = teacher_depth("teacher.model", params.teacher.model, root)
    require_layers("distill.layers", params.distill.layers, depth, params.teacher.model)
    if search:
        for layers in params.search.layers:
            require_layers("search.layers", layers, depth, params.teacher.model)


def teacher_depth(key: str, name: str, root: Path) -> int | None:
    """Transformer layers of the teacher `name` (a path, relative to root or absolute, a packaged or hub id)
    by its config.json; None when the config does not say."""
    from transformers import AutoConfig

    local = Path(root) / Path(name).expanduser()  # an absolute name stays as it is
    try:
        source = resolve_model_source(str(local) if local.exists() else name)
    except ModelSourceError as err:
        raise ConfigError(f"{key}: {err}") from None
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=hub_offline())
    except OSError as err:
        raise ConfigError(f"{key}: {unreadable(source, err)}") from None
    except ValueError as err:  # e.g. a model_type this transformers does not know
        raise ConfigError(f"{key}: cannot read the config of {source}: {first_line(err)}") from None
    return getattr(config, "num_hidden_layers", None)


def unreadable(source: str, err: OSError) -> str:
    """Why transformers could not read the config of source, in one sentence."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    cause = err.__cause__
    if Path(source).exists():
        return f"cannot read {Path(source) / 'config.json'}: {first_line(err)}"
    if isinstance(cause, RepositoryNotFoundError):
        return f"{source!r} is not a model on the Hugging Face hub (or it is private or gated)"
    if hub_offline() or isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)) \
            or "couldn't connect" in str(err):
        why = "the machine is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)" if hub_offline() \
            else "there is no connection"
        return (f"the Hugging Face hub cannot be reached ({why}) and {source!r} is not in the local Hugging Face "
                "cache; download it while online, or give the path of a local copy")
    return f"cannot read the config of {source!r}: {first_line(err)}"


def require_layers(key: str, layers: list[int], depth: int | None, teacher: str) -> None:
    if not layers:
        raise ConfigError(f"{key} is empty: the student needs at least one teacher layer")
    if depth is not None and max(layers) >= depth:
        raise ConfigError(f"{key} {layers} asks for layer {max(layers)}, but the teacher {teacher} has {depth} "
                          f"layers (0..{depth - 1})")


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
