"""From what the user typed to the model a run measures.

`--workload.model_id` may be a registered id (or an alias of one), any other hub id of a known
family, or a local directory. The id typed is the id recorded, everywhere; a local directory is
recorded as `--workload.model_name ORG/NAME` or `local/<folder>`, never as a path. Defaults come
from the registry for registered ids; otherwise from the checkpoint's own configs where they are
at hand (the local directory, or the local Hugging Face cache), and from the family's reference
model for the rest. `defaults_source` says which default came from where.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from mlenergy.diffusion.inputs.config import ConfigError
from mlenergy.diffusion.inputs.task import task_named
from mlenergy.diffusion.models import hub
from mlenergy.diffusion.models.families import FAMILIES, Family
from mlenergy.diffusion.models.registry import MODELS, ModelSpec, known_model_ids, models_of_family

REGISTRY = "registry"
CHECKPOINT = "checkpoint"
# Defaults a run takes from its model; the component slots are reported next to them.
DEFAULT_KEYS = ("steps", "height", "width", "guidance_scale", "dtype", "max_sequence_length")
VIDEO_DEFAULT_KEYS = ("num_frames", "fps")
# Keys of a saved config that are bookkeeping, not architecture.
_NOT_ARCHITECTURE = ("architectures", "transformers_version", "torch_dtype", "dtype")


def resolve_spec(workload) -> ModelSpec:
    """The ModelSpec of a run, or a ConfigError that says what to type instead."""
    if workload.family is not None and workload.family not in FAMILIES:
        raise ConfigError(f"unknown --workload.family {workload.family!r}; choose one of: "
                          + ", ".join(sorted(FAMILIES)))
    if workload.model_name is not None and not hub.is_hub_id(workload.model_name):
        raise ConfigError(f"--workload.model_name {workload.model_name!r} must be ORG/NAME (letters, "
                          "digits, '.', '_', '-'), the two levels the results are laid out by")
    if workload.variant is not None and workload.weights != "pretrained":
        raise ConfigError("--workload.variant picks weight files to load; it needs "
                          "--workload.weights pretrained")
    typed = workload.model_id
    if typed in MODELS:
        spec = _registered(typed, workload)
    elif Path(typed).is_dir():
        spec = _local(Path(typed), workload)
    elif hub.is_hub_id(typed):
        spec = _unregistered(typed, workload)
    else:
        raise ConfigError(f"{typed!r} is neither a registered model, an existing directory, nor a "
                          "Hugging Face hub id (ORG/NAME)")
    return _with_flow_shift(spec, workload.flow_shift)


def record_id(model_id: str, model_name: str | None = None) -> str:
    """The ORG/NAME a model is recorded and stored under."""
    if model_name is not None:
        return model_name
    if model_id not in MODELS and Path(model_id).is_dir():
        return f"local/{_slug(Path(model_id).resolve().name)}"
    return model_id


def _registered(typed: str, workload) -> ModelSpec:
    row = MODELS[typed]
    if workload.family is not None and workload.family != row.family_name:
        raise ConfigError(f"{typed} is a {row.family_name} model, not {workload.family}; drop "
                          "--workload.family")
    if workload.revision is not None and workload.weights != "pretrained":
        raise ConfigError(f"--workload.revision has no effect on {typed} with "
                          f"--workload.weights {workload.weights} (the registry's architecture is "
                          "built); drop it, or load pretrained weights")
    # The registry's revision belongs to its own id, not to its aliases' repositories.
    revision = workload.revision or (row.revision if typed == row.model_id else None)
    where = REGISTRY if typed == row.model_id else f"{REGISTRY} ({row.model_id})"
    keys = DEFAULT_KEYS + (VIDEO_DEFAULT_KEYS if task_named(row.task).is_video else ())
    return dataclasses.replace(
        row, model_id=workload.model_name or typed, aliases=(), source=typed, revision=revision,
        variant=workload.variant, defaults_source={**dict.fromkeys(keys, where),
                                                   "architecture": where})


def _local(path: Path, workload) -> ModelSpec:
    if workload.revision is not None:
        raise ConfigError(f"{path} is a local directory, which has no revisions; drop "
                          "--workload.revision")
    family = _family(workload.family, hub.local_json(path, hub.MODEL_INDEX), str(path),
                     workload.task.name)
    if workload.weights == "pretrained":
        _check_components(path, _check_pipeline_index(path), family, "point --workload.model_id "
                          "at a complete pipeline directory (as save_pretrained writes it)")
    configs = {slot: hub.local_json(path, _config_file(slot, family))
               for slot in FAMILIES[family].components}
    return _from_checkpoint(record_id(str(path), workload.model_name), family, configs,
                            source=str(path.resolve()), nickname=path.resolve().name,
                            workload=workload)


def _check_pipeline_index(path: Path) -> dict:
    """The model_index.json of a local directory whose weights are loaded: it must name the
    pipeline class `from_pretrained` builds."""
    index = path / hub.MODEL_INDEX
    fix = "point --workload.model_id at a diffusers pipeline directory (as save_pretrained writes it)"
    if not index.is_file():
        raise ConfigError(f"{path} has no {hub.MODEL_INDEX}: {fix}")
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{index} is not readable JSON ({err}); {fix}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("_class_name"), str):
        raise ConfigError(f"{index} names no pipeline class (_class_name); {fix}")
    return doc


# Files that hold weights, as diffusers and transformers save them (sharded: an index beside).
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".index.json")


def _check_components(folder: Path, index: Mapping, family: str, fix: str) -> None:
    """The component folders a pipeline loads are there: each that model_index.json names (or
    the family loads from a subfolder of its own), every model with its config and weights."""
    fam = FAMILIES[family]
    named = {slot: slot for slot, entry in index.items() if not slot.startswith("_")
             and isinstance(entry, list) and None not in entry}
    subfolders = {**named, **fam.pretrained_subfolders}
    missing = [slot for slot in fam.components if slot not in subfolders]
    problem = (f"its {hub.MODEL_INDEX} names no {', '.join(missing)} (the {family} family loads "
               "them)") if missing else None
    absent = [f"{sub}/" for sub in subfolders.values() if not (folder / sub).is_dir()]
    if problem is None and absent:
        problem = f"the component folder(s) {', '.join(absent)} are missing"
    for slot, sub in subfolders.items():
        kind = fam.components[slot].kind if slot in fam.components else None
        if problem is not None or kind in (None, "scheduler"):
            continue
        if not (folder / sub / "config.json").is_file():
            problem = f"{sub}/ has no config.json"
        elif not any(f.name.endswith(_WEIGHT_FILES) for f in (folder / sub).iterdir()):
            problem = f"{sub}/ holds no weight files (*.safetensors, *.bin)"
    if problem is not None:
        raise ConfigError(f"{folder} is not a complete {index['_class_name']}: {problem}; {fix}, "
                          "or measure the architecture with --workload.weights random")


def _unregistered(repo: str, workload) -> ModelSpec:
    revision = workload.revision
    index = hub.cached_json(repo, hub.MODEL_INDEX, revision)
    fetch = workload.weights == "pretrained" and hub.reachable()
    if fetch:
        # The access check, and the configs the defaults come from.
        index = hub.fetch_model_index(repo, revision)
    if index is None and workload.family is None:
        raise ConfigError(
            f"unknown model id {repo!r}: it is not registered ({', '.join(known_model_ids(workload.task.name))}) "
            f"and its {hub.MODEL_INDEX} is not in the local Hugging Face cache; name its pipeline "
            f"family with --workload.family ({', '.join(sorted(FAMILIES))}), or download it "
            f"first (`hf download {repo}`)")
    family = _family(workload.family, index, repo, workload.task.name)
    files = {slot: _config_file(slot, family) for slot in FAMILIES[family].components}
    if fetch:
        hub.fetch_small_files(repo, revision, [files[s] for s in _config_slots(family)])
    configs = {slot: hub.cached_json(repo, name, revision) for slot, name in files.items()}
    return _from_checkpoint(workload.model_name or repo, family, configs, source=repo,
                            nickname=repo.split("/", 1)[1], workload=workload)


def _config_slots(family: str) -> list[str]:
    """The slots whose configs carry defaults: the denoiser, the VAE and the scheduler."""
    fam = FAMILIES[family]
    return [s for s in (fam.denoiser_slot, "vae", "scheduler") if s in fam.components]


def _config_file(slot: str, family: str) -> str:
    if FAMILIES[family].components[slot].kind == "scheduler":
        return f"{slot}/scheduler_config.json"
    return f"{slot}/config.json"


def _family(given: str | None, index: Mapping | None, label: str, task: str) -> str:
    named = index.get("_class_name") if index else None
    by_pipeline = {f.diffusers_pipeline: name for name, f in FAMILIES.items()}
    inferred = by_pipeline.get(named) if isinstance(named, str) else None
    if given is not None:
        if inferred is not None and inferred != given:
            raise ConfigError(f"{label}'s {hub.MODEL_INDEX} names {named} (the {inferred} family), "
                              f"not {given}; drop --workload.family or correct it")
        return given
    if inferred is not None:
        return inferred
    if named is not None:
        raise ConfigError(f"{label}'s {hub.MODEL_INDEX} names {named}, which no family here runs; "
                          f"the families: {', '.join(sorted(FAMILIES))}")
    raise ConfigError(f"{label}: name its pipeline family with --workload.family ("
                      + ", ".join(n for n, f in sorted(FAMILIES.items()) if f.task == task) + ")")


def _from_checkpoint(name: str, family: str, configs: Mapping[str, dict | None], *,
                     source: str, nickname: str, workload) -> ModelSpec:
    """A spec from a checkpoint's configs, the family's reference model filling the gaps."""
    fam = FAMILIES[family]
    base = models_of_family(family)[0]
    fallback = f"the {family} family ({base.model_id})"
    found = {slot: _architecture(cfg) for slot, cfg in configs.items() if cfg}
    sources: dict[str, Any] = dict.fromkeys(DEFAULT_KEYS, fallback)
    values: dict[str, Any] = {}
    size = _size(fam, configs)
    if size is not None:
        values["height"], values["width"] = size
        sources["height"] = sources["width"] = CHECKPOINT
    if task_named(fam.task).is_video:
        sources.update(dict.fromkeys(VIDEO_DEFAULT_KEYS, fallback))
        frames = _frames(fam, configs)
        if frames is not None:
            values["num_frames"], sources["num_frames"] = frames, CHECKPOINT
    sources.update({slot: CHECKPOINT if slot in found else fallback for slot in fam.components})
    return dataclasses.replace(
        base, model_id=name, nickname=nickname, aliases=(), source=source,
        revision=workload.revision, variant=workload.variant,
        architecture={**base.architecture, **found},
        tiny_overrides={"scheduler": found["scheduler"]} if "scheduler" in found else {},
        defaults_source=sources, **values)


def _architecture(config: Mapping[str, Any]) -> dict:
    return {k: v for k, v in config.items()
            if not k.startswith("_") and k not in _NOT_ARCHITECTURE}


def _vae_factor(vae: Mapping | None) -> int | None:
    channels = (vae or {}).get("block_out_channels") or (vae or {}).get("encoder_block_out_channels")
    return 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else None


def _size(fam: Family, configs: Mapping[str, dict | None]) -> tuple[int, int] | None:
    """The size the pipeline generates by default: the denoiser's sample size in latents times
    the VAE's downsampling (where the checkpoint says both)."""
    denoiser = configs.get(fam.denoiser_slot) or {}
    factor = _vae_factor(configs.get("vae"))
    side = denoiser.get("sample_size")
    height, width = (side, side) if isinstance(side, int) else (
        denoiser.get("sample_height"), denoiser.get("sample_width"))
    if factor is None or not isinstance(height, int) or not isinstance(width, int):
        return None
    height, width = height * factor, width * factor
    if height % fam.spatial_factor or width % fam.spatial_factor:
        return None
    return height, width


def _frames(fam: Family, configs: Mapping[str, dict | None]) -> int | None:
    denoiser = configs.get(fam.denoiser_slot) or {}
    frames = denoiser.get(fam.fixed_frames_key or "sample_frames")
    if not isinstance(frames, int) or (fam.temporal_factor > 1
                                       and (frames - 1) % fam.temporal_factor):
        return None
    return frames


def _with_flow_shift(spec: ModelSpec, value: float | None) -> ModelSpec:
    if value is None:
        return spec
    key = spec.family.flow_shift_key
    scheduler = spec.family.components["scheduler"].cls
    if key is None or spec.architecture["scheduler"].get("use_dynamic_shifting"):
        raise ConfigError(f"--workload.flow_shift: {spec.model_id}'s scheduler ({scheduler}) has "
                          "no fixed flow shift to set; drop the flag")
    if not value > 0:
        raise ConfigError(f"--workload.flow_shift must be above 0, got {value}")
    return dataclasses.replace(spec, scheduler_overrides={key: value})


def check_pretrained(spec: ModelSpec, offline: bool, here: bool = False) -> None:
    """Pretrained weights can be loaded: a local pipeline directory, or a hub repository the
    user may access (asked of the hub when it answers). Else, offline or for a run of this
    machine (`here`), the local cache must hold the whole pipeline; a run planned for another
    machine that is not offline may download there."""
    if Path(spec.load_id).is_dir():
        return
    if hub.reachable():
        hub.fetch_model_index(spec.load_id, spec.revision)
        return
    if not (offline or here):
        return
    index_file = hub.cached_file(spec.load_id, hub.MODEL_INDEX, spec.revision)
    index = hub.cached_json(spec.load_id, hub.MODEL_INDEX, spec.revision)
    if index_file is None or index is None or not isinstance(index.get("_class_name"), str):
        raise ConfigError(hub.not_cached_message(spec.load_id, spec.revision))
    _check_components(index_file.parent, index, spec.family_name,
                      f"download it whole first (`hf download {spec.load_id}"
                      + (f" --revision {spec.revision}" if spec.revision else "") + "`)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _token(value: str) -> str:
    if re.fullmatch(r"[0-9a-f]{40}", value):
        return value[:12]
    return re.sub(r"[^A-Za-z0-9._]+", "-", value).strip("-")


def run_dir_tokens(spec: ModelSpec) -> list[str]:
    """`+key-value` parts of the run directory for settings off the model's defaults."""
    tokens = []
    row = MODELS.get(spec.load_id)
    registry_revision = row.revision if row is not None and row.model_id == spec.load_id else None
    if spec.revision is not None and spec.revision != registry_revision:
        tokens.append(f"rev-{_token(spec.revision)}")
    if spec.variant is not None:
        tokens.append(f"variant-{_token(spec.variant)}")
    for value in spec.scheduler_overrides.values():
        tokens.append(f"flowshift-{value:g}")
    return tokens


def results_fields(spec: ModelSpec, prompts) -> dict:
    """What results.json says about the model's provenance and where its defaults came from."""
    local = Path(spec.load_id).is_dir()
    return {
        "model_source": {
            "kind": "local" if local else "hub",
            "id": Path(spec.load_id).name if local else spec.load_id,
            "revision": spec.revision,
            "variant": spec.variant,
        },
        "model_defaults": dict(spec.defaults_source),
        "scheduler_overrides": dict(spec.scheduler_overrides) or None,
        "prompt_sampling": prompts.prompt_sampling,
    }


def describe(spec: ModelSpec) -> str:
    """One line for the log: what loads, and where the defaults came from."""
    local = Path(spec.load_id).is_dir()
    where = (f"local directory {Path(spec.load_id).name}" if local
             else f"hub {spec.load_id}" + (f" at {spec.revision}" if spec.revision else ""))
    by_source: dict[str, list[str]] = {}
    for key, source in spec.defaults_source.items():
        by_source.setdefault(source, []).append(key)
    if not by_source or all(s.startswith(REGISTRY) for s in by_source):
        origin = f"defaults from the {next(iter(by_source), REGISTRY)}"
    elif CHECKPOINT not in by_source:
        origin = ("none of its configs are at hand (not in the local Hugging Face cache), so "
                  f"every default is from {next(iter(by_source))}")
    else:
        origin = "; ".join(f"{', '.join(keys)} from "
                           + ("its own configs" if source == CHECKPOINT else source)
                           for source, keys in by_source.items())
    return f"Model {spec.model_id} ({where}, {spec.family_name} family): {origin}"
