"""Loading frozen models from the Hugging Face hub or a local folder, one code path for both.

A quick reachability check first (``hub_kwargs``), so an offline machine answers from the local cache at
once instead of after minutes of per-file retries; then each part through ``from_pretrained``
(``load_parts``), where a part that fails is one ModelNotFoundError line naming the part and what to do.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelNotFoundError

__all__ = ["looks_like_path", "resolve_model", "hub_kwargs", "load_parts", "first_line"]


def looks_like_path(model: str) -> bool:
    return (model.startswith(("/", "./", "../", "~", "\\")) or model.count("/") > 1
            or Path(model).expanduser().exists() or (len(model) > 1 and model[1] == ":"))


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, ValueError)
    try:
        from huggingface_hub.errors import EntryNotFoundError
        errors += (EntryNotFoundError,)
    except ImportError:  # older huggingface_hub: its errors are OSErrors
        pass
    return errors


def _hub_status(model: str, revision: str | None) -> str:
    """'online', 'offline' or 'missing', from one quick request without retries.

    Without it an offline machine spends minutes in huggingface_hub's per-file retry backoff before
    from_pretrained gives up; with it we fall back to the local cache (local_files_only) at once.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "offline"
    try:
        huggingface_hub.model_info(model, revision=revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return "missing"
    except Exception:  # no network, proxy, DNS, timeout, server error: try the cache
        return "offline"
    return "online"


def hub_kwargs(model: str, revision: str | None, what: str, how: str) -> dict:
    """from_pretrained kwargs for a hub id: the revision, and local_files_only when the hub is unreachable
    (so the cache answers at once). A repository or revision the hub says does not exist is a one-line
    ModelNotFoundError; ``what`` names the model's role, ``how`` says how to get it."""
    status = _hub_status(model, revision)
    if status == "missing":
        rev = f" at revision '{revision}'" if revision else ""
        raise ModelNotFoundError(f"{what} '{model}'{rev} is not on the hub (misspelt, private or removed?): {how}")
    return {"revision": revision, "local_files_only": status == "offline"}


def load_parts(specs, source: str, kwargs: dict, *, model: str, local: bool, what: str, how: str) -> dict:
    """``{name: loader.from_pretrained(source, **kwargs, **extra)}`` for specs ``(name, loader, extra, label)``;
    a part that fails to load is one ModelNotFoundError line (``label`` names the part inside a local folder)."""
    parts = {}
    for name, loader, extra, label in specs:
        try:
            parts[name] = loader.from_pretrained(source, **kwargs, **extra)
        except _hub_errors() as exc:
            if local:
                why = f"cannot load {label} of {what} folder '{model}': {first_line(exc)}"
            elif kwargs["local_files_only"]:
                why = f"{what} '{model}' is not in the local cache and the hub is unreachable (offline?)"
            else:
                why = f"cannot load {what} '{model}' from the hub: {first_line(exc)}"
            raise ModelNotFoundError(f"{why}; {how}") from exc
    return parts


def resolve_model(model: str, subfolders, what: str, how: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is it a local folder): a folder must hold every one of ``subfolders``;
    a path that is not a folder, or a folder missing a part, is one ModelNotFoundError line naming it."""
    path = Path(model).expanduser()
    if path.is_dir():
        for sub in subfolders:
            if not (path / sub).is_dir():
                raise ModelNotFoundError(f"{what} folder '{model}' has no {sub}/ subfolder: {how}")
        return str(path.resolve()), True
    if looks_like_path(model):
        raise ModelNotFoundError(f"guidance model '{model}' is not a folder: {how}")
    return model, False
