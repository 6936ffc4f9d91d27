"""The Hugging Face hub side of pretrained weights: the local cache, access, downloading first.

Everything reads the environment when called (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN,
HF_ENDPOINT through huggingface_hub), so the settings of the process that runs are the ones used.
Access is checked while planning, by fetching the pipeline's `model_index.json`: that one small
request tells a gated repository, a missing one, a missing revision and a repository that is no
diffusers pipeline apart, before any weights load. Weights are then downloaded by one process
per node while the others wait, and every process loads from the local cache.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from pathlib import Path

from mlenergy.diffusion.inputs.config import ConfigError
from mlenergy.diffusion.process.launch import launched_local_rank

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"

# Waiting for another process's download: far longer than any collective should take.
DOWNLOAD_TIMEOUT = datetime.timedelta(
    seconds=float(os.environ.get("MLENERGY_DOWNLOAD_TIMEOUT_S", str(6 * 3600)))
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(text: str) -> bool:
    """ORG/NAME, the only form the `<org>/<model>` layout of the results can hold."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def cache_dir() -> Path:
    """Where huggingface_hub keeps models: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def cached_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """Where the local cache holds a file of a hub repository; None when it does not."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir()),
                                  revision=revision or "main")
    return Path(path) if isinstance(path, str) else None


def cached_json(repo_id: str, filename: str, revision: str | None) -> dict | None:
    """A JSON file of a hub repository from the local cache only; None when it is not there."""
    path = cached_file(repo_id, filename, revision)
    return _read_json(path) if path is not None else None


def local_json(directory: Path, filename: str) -> dict | None:
    path = Path(directory) / filename
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def fetch_model_index(repo_id: str, revision: str | None) -> dict:
    """The repository's model_index.json, from the hub (or the cache, where the hub does not
    answer): the access check. Raises ConfigError with one line that says what to do."""
    return _fetch_model_index(repo_id, revision, str(cache_dir()), not reachable(), _endpoint())


@functools.lru_cache(maxsize=None)
def _fetch_model_index(repo_id: str, revision: str | None, cache: str, local_only: bool,
                       endpoint: str | None) -> dict:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, MODEL_INDEX, revision=revision, cache_dir=cache,
                               local_files_only=local_only, endpoint=endpoint)
    except Exception as err:  # huggingface_hub's errors, sorted out by class below
        raise ConfigError(access_error_message(err, repo_id, revision)) from None
    doc = _read_json(Path(path))
    if doc is None:
        raise ConfigError(f"{repo_id}'s {MODEL_INDEX} is not a JSON object; is it a diffusers "
                          "pipeline?")
    return doc


def fetch_small_files(repo_id: str, revision: str | None, filenames: list[str]) -> None:
    """Bring config files into the cache where the hub has them (after `fetch_model_index`
    succeeded); a file the repository lacks is simply left out."""
    from huggingface_hub import hf_hub_download

    for filename in filenames:
        try:
            hf_hub_download(repo_id, filename, revision=revision, cache_dir=str(cache_dir()),
                            local_files_only=not reachable(), endpoint=_endpoint())
        except Exception:  # a missing config only means fewer defaults from the checkpoint
            continue


def access_error_message(err: BaseException, repo_id: str, revision: str | None) -> str:
    """One line for a failed hub request, from huggingface_hub's own error classes."""
    from huggingface_hub import errors

    at = f" at revision {revision!r}" if revision else ""
    instead = "or measure the architecture without weights: --workload.weights random"
    if isinstance(err, errors.GatedRepoError):
        return (f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_id}, then "
                f"log in with `hf auth login` or set HF_TOKEN to a token with access; {instead}")
    if isinstance(err, errors.RepositoryNotFoundError):
        return (f"{repo_id} was not found on the Hugging Face hub: check the id, and for a "
                f"private repository log in with `hf auth login` or set HF_TOKEN; {instead}")
    if isinstance(err, errors.RevisionNotFoundError):
        return (f"{repo_id} has no revision {revision!r}: pass a branch, tag, commit or "
                "refs/pr/N that exists to --workload.revision")
    if isinstance(err, errors.LocalEntryNotFoundError):
        why = ("HF_HUB_OFFLINE is set" if offline()
               else "the Hugging Face hub could not be reached"
               + (f" at HF_ENDPOINT {_endpoint()}" if _endpoint() else ""))
        return (f"{repo_id}{at} is not in the local Hugging Face cache ({cache_dir()}) and {why}: "
                f"download it first with `hf download {repo_id}"
                + (f" --revision {revision}" if revision else "")
                + f"` where there is network (the same HF_HOME), {instead}")
    if isinstance(err, errors.EntryNotFoundError):
        return (f"{repo_id}{at} has no {MODEL_INDEX}, so it is not a diffusers pipeline: use a "
                "diffusers-format repository, or the revision that holds one (--workload.revision)")
    if isinstance(err, errors.HFValidationError):
        return f"{repo_id!r} is not a valid Hugging Face repository id ({err})"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"could not reach {repo_id}{at} on the Hugging Face hub ({first}); {instead}"


def local_snapshot(repo_id: str, revision: str | None, variant: str | None, pipeline_cls,
                   extra_subfolders: tuple[str, ...] = ()) -> str:
    """The local folder of a hub pipeline, downloaded by local rank 0 of each node while the
    other ranks wait; they then find it in the cache without touching the network.

    Only the files the pipeline class loads (for `variant`) are fetched, as `from_pretrained`
    would, plus `extra_subfolders` that the pipeline's model_index.json does not list.
    """
    import torch.distributed as dist

    group = None
    if dist.is_initialized() and dist.get_world_size() > 1:
        # A group of its own: a long download must not trip the run's collective timeout.
        group = dist.new_group(backend="gloo", timeout=DOWNLOAD_TIMEOUT)
    folder = None
    if launched_local_rank() == 0:
        folder = _download(repo_id, revision, variant, pipeline_cls, extra_subfolders,
                           local_files_only=not reachable())
    if group is not None:
        dist.barrier(group=group)
        dist.destroy_process_group(group)
    if folder is None:
        folder = _download(repo_id, revision, variant, pipeline_cls, extra_subfolders,
                           local_files_only=True)
    return folder


def _download(repo_id, revision, variant, pipeline_cls, extra_subfolders, *,
              local_files_only: bool) -> str:
    from huggingface_hub import snapshot_download

    folder = pipeline_cls.download(repo_id, revision=revision, variant=variant,
                                   cache_dir=str(cache_dir()), local_files_only=local_files_only)
    if extra_subfolders:
        snapshot_download(repo_id, revision=revision, cache_dir=str(cache_dir()),
                          allow_patterns=[f"{sub}/*" for sub in extra_subfolders],
                          local_files_only=local_files_only)
    return str(folder)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def reachable() -> bool:
    """Whether the hub's host answers at all (HF_ENDPOINT respected; never when HF_HUB_OFFLINE
    is set): a quick look before huggingface_hub spends half a minute retrying a host that
    cannot be resolved."""
    return not offline() and _answers(_endpoint() or "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def _answers(endpoint: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def not_cached_message(repo_id: str, revision: str | None) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return access_error_message(LocalEntryNotFoundError("not cached"), repo_id, revision)
