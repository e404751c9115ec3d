"""Where a model comes from: the shipped anygen-tiny, a local directory, or a Hugging Face Hub repository.

    resolve_model()                       # the embedded anygen-tiny (also "anygen-tiny", "default", "pkg://...")
    resolve_model("runs/my-model")        # a directory written by save_pretrained
    resolve_model("org/name")             # downloaded with huggingface_hub, or read from its cache offline

Hub repositories are fetched with ``huggingface_hub.snapshot_download`` -- only the file types a saved model
holds (safetensors weights, JSON configs), never pickles or code. When ``HF_HUB_OFFLINE`` is set (read at call
time, so setting it after import works) or ``local_files_only=True``, nothing touches the network and the
repository must be in the cache (``HF_HUB_CACHE`` or ``cache_dir``). :func:`push_to_hub` uploads a
``save_pretrained`` directory with ``HfApi.upload_folder``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from anygen.errors import CheckpointError

MODEL_FILES = ["*.json", "*.safetensors"]  # everything save_pretrained writes; no pickles, no code
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """Whether Hub access is switched off (``HF_HUB_OFFLINE``, as huggingface_hub reads it, or set since)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_model(name_or_path: str | Path | None = None, *, revision: str | None = None,
                  cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                  token: str | bool | None = None) -> Path:
    """The local directory of a saved model.

    Args:
        name_or_path: ``None``, ``"anygen-tiny"`` or ``"default"`` for the embedded model (see
            :func:`anygen.assets.resolve_model`); an existing directory; or a Hub repo id ``"org/name"``.
        revision: branch, tag or commit of a Hub repository (default ``main``).
        cache_dir: the Hub cache to use (default ``HF_HUB_CACHE``, else huggingface_hub's own default).
        local_files_only: never use the network (default: whether Hub access is off, see :func:`is_offline`).
        token: a Hub token for private repositories (default: huggingface_hub's stored login).

    Raises:
        CheckpointError: naming the argument when it is neither a directory nor a repository that can be found.
    """
    from anygen.assets import resolve_model as shipped_or_local

    path = shipped_or_local(None if name_or_path is None else os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{str(name_or_path)!r} is a file; pass the directory a model was saved to")
    if not _REPO_ID.match(str(name_or_path)):
        raise CheckpointError(f"{str(name_or_path)!r} is neither a directory nor a Hub repository id "
                              "('org/name'); use 'anygen-tiny' for the embedded model")
    return _snapshot(str(name_or_path), revision, cache_dir, local_files_only, token)


def _snapshot(repo_id: str, revision: str | None, cache_dir: str | Path | None, local_files_only: bool | None,
              token: str | bool | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = is_offline() if local_files_only is None else local_files_only or is_offline()
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                   token=token, allow_patterns=MODEL_FILES)
    except LocalEntryNotFoundError as err:
        why = "Hub access is off (HF_HUB_OFFLINE or local_files_only)" if offline else "the Hub cannot be reached"
        at = "" if revision is None else f" at {revision!r}"
        raise CheckpointError(f"{repo_id!r} is not a local directory, and the Hub repository {repo_id!r}{at} is not "
                              f"in the Hub cache ({cache or 'the default one'}) while {why}") from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot fetch the Hub repository {repo_id!r}: {str(err).splitlines()[0]}") from err
    return Path(folder)


def push_to_hub(model: Any, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                commit_message: str = "Upload anygen model", revision: str | None = None,
                create_pr: bool = False, **save_kwargs: Any) -> str:
    """Save ``model`` (anything with ``save_pretrained(directory, **save_kwargs)``) and upload it to ``repo_id``.

    Creates the repository if needed; returns the URL of the commit. Refused while Hub access is off.

    Example:
        >>> push_to_hub(pipe.model, "me/my-anygen", private=True, dtype=torch.float16)  # doctest: +SKIP
    """
    if not _REPO_ID.match(str(repo_id)):
        raise CheckpointError(f"repo_id={repo_id!r} must look like 'org/name'")
    if is_offline():
        raise CheckpointError(f"push_to_hub({repo_id!r}) needs the network, but HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="anygen-push-") as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision, create_pr=create_pr, allow_patterns=MODEL_FILES)
    return str(getattr(info, "commit_url", info))


__all__ = ["is_offline", "resolve_model", "push_to_hub"]
