"""model_info.json: what the ML.ENERGY data toolkit reads about a model, written without ever
clobbering a good one.

It describes the pretrained architecture, as the leaderboard's curated files do (nickname,
billions of parameters, precision), whatever weights a run used: the parameter count comes from
the model's full-size config (the registry's published values, or the checkpoint's own), counted
on the meta device. A run writes the file where none exists; an existing file that describes the
same model is left alone, and one that differs is kept (with a line in the log), except a file
the old tiny-run code wrote with a count of the tiny model. A tiny run writes nothing into a
base directory that holds runs of other weights, and nothing where the real architecture is
unknown.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlenergy.diffusion.models.registry import MODELS, ModelSpec, is_tiny
from mlenergy.diffusion.results.files import RESULTS, write_json_atomically
from mlenergy.diffusion.results.results_reader import ResultsError, RunResults

MODEL_INFO = "model_info.json"


def real_architecture_known(spec: ModelSpec) -> bool:
    """Whether `spec.architecture`'s denoiser is the model's own (registry or checkpoint config),
    not the family's reference model standing in for it."""
    if not spec.defaults_source:  # a registry row as it stands in the table
        return spec.model_id in MODELS
    source = spec.defaults_source.get("architecture") or spec.defaults_source.get(
        spec.family.denoiser_slot, "")
    return source.startswith(("registry", "checkpoint"))


def model_info_document(spec: ModelSpec, dtype: str) -> dict | None:
    """The document for `spec`, or None when its real architecture is not known."""
    if not real_architecture_known(spec):
        return None
    from mlenergy.diffusion.models.pipelines import denoiser_parameters_of

    parameters = denoiser_parameters_of(spec.family, spec.architecture)
    return {
        "model_id": spec.model_id,
        "nickname": spec.nickname,
        "total_parameters_billion": round(parameters / 1e9, 3),
        "weight_precision": dtype,
        # Where the count comes from; the toolkit ignores keys it does not know.
        "parameters_from": "denoiser config",
    }


def should_write_model_info(base_dir: Path, document: dict | None, weights: str) -> tuple[bool, str]:
    """(write it?, why), for the log."""
    path = Path(base_dir) / MODEL_INFO
    if document is None:
        return False, (f"{MODEL_INFO} not written: the model's full-size architecture is not "
                       "known here (no registry row, no cached config of its denoiser)")
    existing = _read(path)
    if existing is not None:
        if is_tiny(existing.get("weights")):
            return True, f"{path} rewritten: it held the tiny model's count"
        same = (existing.get("total_parameters_billion") == document["total_parameters_billion"]
                and existing.get("model_id", document["model_id"]) == document["model_id"])
        if same:
            return False, f"{path} already describes this model"
        return False, (f"{path} kept: it describes {existing.get('model_id', 'another model')} with "
                       f"{existing.get('total_parameters_billion')} B parameters, this run "
                       f"{document['total_parameters_billion']} B; remove it to replace it")
    if is_tiny(weights) and _holds_other_weights(Path(base_dir)):
        return False, f"{MODEL_INFO} not written: {base_dir} holds runs of other weights"
    return True, f"{path} written"


def write_model_info(base_dir: Path, spec: ModelSpec, weights: str, dtype: str) -> str:
    """Write model_info.json into `base_dir` if it should be; returns the line to log. The
    precision is the run's, except for tiny weights, which say nothing about the model's."""
    document = model_info_document(spec, spec.dtype if is_tiny(weights) else dtype)
    write, why = should_write_model_info(base_dir, document, weights)
    if write:
        write_json_atomically(Path(base_dir) / MODEL_INFO, document)
    return why


def _read(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _holds_other_weights(base_dir: Path) -> bool:
    """Whether a run of `base_dir` measured other than tiny weights (results too old to say
    which count as other); results that cannot be read say nothing."""
    for results in base_dir.glob(f"*/{RESULTS}"):
        try:
            stored = RunResults.load(results)
        except ResultsError:
            continue
        if not is_tiny(stored.weights):
            return True
    return False
