"""Building the diffusers pipeline a run measures: pretrained, full-size random, or tiny.

All three give the same diffusers pipeline class, so they go through the same xDiT code. Random
and tiny weights need no files: tokenizers are built in memory with a small vocabulary (token ids
only have to be valid; the pipelines pad text to a fixed length, so the work done is the same).
"""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import torch

from mlenergy.diffusion.inputs.config import ConfigError
from mlenergy.diffusion.models import hub
from mlenergy.diffusion.models.families import Component, Family
from mlenergy.diffusion.models.registry import ModelSpec

Weights = Literal["pretrained", "random", "tiny"]

# Every rank builds random weights from this seed, so that all ranks hold the same model, as
# sequence parallelism requires.
WEIGHT_SEED = 0

_LETTERS = string.ascii_lowercase


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights that cannot be loaded; the message says what to do, so a failing rank
    prints it as one line (the traceback goes to driver_log.txt)."""

    explained = True


def clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in _LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer(max_length: int):
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + ch, -1.0) for ch in _LETTERS] + [(ch, -2.0) for ch in _LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def bert_tokenizer(max_length: int = 77):
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(_LETTERS) + ["##" + ch for ch in _LETTERS]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=max_length)


def llama_tokenizer():
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for ch in _LETTERS + " ":
        vocab[ch] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[], unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>")


def gemma_tokenizer():
    """One token a word (or punctuation mark), about as many as Gemma's own tokenizer makes:
    SANA pads its text to the length of its long system instruction plus the prompt's, so the
    instruction's token count sets how much the text encoder computes (a letter a token would
    make it five times longer)."""
    import tokenizers
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in _LETTERS:
        vocab[ch] = len(vocab)
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return GemmaTokenizer(tokenizer_object=words)


def _in_memory_tokenizer(kind: str, max_sequence_length: int | None):
    if kind in ("clip", "clip_with_projection"):
        return clip_tokenizer()
    if kind in ("t5", "umt5"):
        return t5_tokenizer(max_sequence_length or 256)
    if kind == "bert":
        return bert_tokenizer()
    if kind == "llama":
        return llama_tokenizer()
    if kind == "gemma2":
        return gemma_tokenizer()
    raise ValueError(f"no tokenizer for {kind}")


def _text_encoder(component: Component, config: Mapping[str, Any]):
    import transformers

    if component.kind in ("clip", "clip_with_projection"):
        # Pool at the in-memory tokenizer's end-of-text token.
        cfg = transformers.CLIPTextConfig(**{**config, "bos_token_id": 0, "eos_token_id": 1,
                                             "pad_token_id": 1})
    elif component.kind == "t5":
        cfg = transformers.T5Config(**{**config, "pad_token_id": 0, "eos_token_id": 1,
                                       "decoder_start_token_id": 0})
    elif component.kind == "umt5":
        cfg = transformers.UMT5Config(**{**config, "pad_token_id": 0, "eos_token_id": 1,
                                         "decoder_start_token_id": 0})
    elif component.kind == "llama":
        cfg = transformers.LlamaConfig(**{**config, "pad_token_id": 3, "bos_token_id": 1,
                                          "eos_token_id": 2})
    elif component.kind == "bert":
        cfg = transformers.BertConfig(**{**config, "pad_token_id": 0})
    elif component.kind == "gemma2":
        cfg = transformers.Gemma2Config(**{**config, "pad_token_id": 0, "eos_token_id": 1,
                                           "bos_token_id": 2})
    else:
        raise ValueError(component.kind)
    return getattr(transformers, component.cls)(cfg)


def _component(component: Component, config: Mapping[str, Any], cls=None):
    import diffusers

    if component.kind == "scheduler":
        return getattr(diffusers, component.cls).from_config(dict(config))
    if component.kind in ("vae", "transformer", "unet"):
        # from_config, not the constructor: some of xDiT's denoiser classes set themselves up there.
        return (cls or getattr(diffusers, component.cls)).from_config(dict(config))
    return _text_encoder(component, config)


@contextlib.contextmanager
def _default_dtype_and_device(dtype: torch.dtype, device: torch.device | str) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_from_configs(
    family: Family,
    configs: Mapping[str, Mapping[str, Any]],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    max_sequence_length: int | None,
    denoiser_cls=None,
):
    """Assemble a family's diffusers pipeline from component configs, with random weights.

    Weights are created directly on `device` in `dtype` (no CPU copy of a 12 B model), seeded
    identically on every rank. `denoiser_cls` replaces the denoiser's diffusers class (with a
    subclass of it, such as xDiT's sequence-parallel transformers).
    """
    import diffusers

    torch.manual_seed(WEIGHT_SEED)
    parts: dict[str, Any] = {}
    for slot, component in family.components.items():
        if component.kind == "scheduler":
            # Schedulers keep float32 tables on the CPU by design.
            parts[slot] = _component(component, configs[slot])
            continue
        with _default_dtype_and_device(dtype, device):
            # Built modules start in training mode: dropout would make every call random.
            cls = denoiser_cls if slot == family.denoiser_slot else None
            parts[slot] = _component(component, configs[slot], cls).eval().requires_grad_(False)
        if component.tokenizer_slot:
            parts[component.tokenizer_slot] = _in_memory_tokenizer(
                component.kind, max_sequence_length
            )
    pipeline_cls = getattr(diffusers, family.diffusers_pipeline)
    return pipeline_cls(**parts, **family.pipeline_kwargs)


def build_pipeline(
    spec: ModelSpec,
    weights: Weights,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    max_sequence_length: int | None,
    denoiser_cls=None,
):
    family = spec.family
    if weights == "pretrained":
        pipeline = load_pretrained(spec, dtype=dtype, device=device, denoiser_cls=denoiser_cls)
    else:
        pipeline = build_from_configs(family, spec.component_configs(weights), dtype=dtype,
                                      device=device, max_sequence_length=max_sequence_length,
                                      denoiser_cls=denoiser_cls)
    if spec.scheduler_overrides:
        # A fresh scheduler from the changed config: assigning to a built scheduler's config
        # would leave its registered config (and saved copies of it) saying otherwise.
        scheduler = pipeline.scheduler
        pipeline.scheduler = type(scheduler).from_config(
            {**scheduler.config, **spec.scheduler_overrides})
    if family.vae_tiling:
        pipeline.vae.enable_tiling()
    if family.vae_slicing:
        pipeline.vae.enable_slicing()
    return pipeline


def load_pretrained(spec: ModelSpec, *, dtype: torch.dtype, device: torch.device | str,
                    denoiser_cls=None):
    """from_pretrained from a local directory, or from the local Hugging Face cache once local
    rank 0 of each node has downloaded (or verified) the snapshot (`hub.local_snapshot`)."""
    import diffusers

    family = spec.family
    pipeline_cls = getattr(diffusers, family.diffusers_pipeline)
    try:
        folder = spec.load_id if Path(spec.load_id).is_dir() else hub.local_snapshot(
            spec.load_id, spec.revision, spec.variant, pipeline_cls,
            tuple(family.pretrained_subfolders.values()))
        components = {}
        for slot, subfolder in family.pretrained_subfolders.items():
            # Not in model_index.json, so not offered in other variants: the main weights.
            cls = getattr(diffusers, family.components[slot].cls)
            components[slot] = cls.from_pretrained(folder, subfolder=subfolder, dtype=dtype)
        if denoiser_cls is not None:
            components[family.denoiser_slot] = denoiser_cls.from_pretrained(
                folder, subfolder=family.denoiser_slot, dtype=dtype, variant=spec.variant)
        pipeline = pipeline_cls.from_pretrained(folder, dtype=dtype, variant=spec.variant,
                                                **components, **family.pipeline_kwargs)
    except (OSError, ValueError) as err:
        raise WeightsNotFoundError(_weights_error(spec, err)) from err
    return pipeline.to(device)


def _weights_error(spec: ModelSpec, err: BaseException) -> str:
    """One line for weights that would not load: the hub's own error in words where the hub
    was asked (not cached and unreachable, gated, missing), else the loader's first line."""
    from huggingface_hub import errors

    if isinstance(err, errors.HfHubHTTPError | errors.LocalEntryNotFoundError) \
            and not Path(spec.load_id).is_dir():
        return hub.access_error_message(err, spec.load_id, spec.revision)
    where = spec.load_id + (f" at revision {spec.revision}" if spec.revision else "")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"could not load weights for {spec.model_id} from {where} ({first}); download them "
            f"first (`hf download {spec.load_id}`), or measure the architecture with "
            "--workload.weights random")


def denoiser_parameters_of(family: Family, configs: Mapping[str, Mapping[str, Any]]) -> int:
    """Parameters of the denoiser of `configs` (slot -> config), built on the meta device: no
    memory, no time."""
    component = family.components[family.denoiser_slot]
    with _default_dtype_and_device(torch.bfloat16, "meta"):
        module = _component(component, configs[family.denoiser_slot])
    return sum(p.numel() for p in module.parameters())


def parameters_per_slot(family: Family, configs: Mapping[str, Mapping[str, Any]],
                        slots) -> dict[str, int]:
    """Parameters of each model slot of `slots` built from `configs`, on the meta device (no
    memory; a fraction of a second for a 12 B model once the classes are imported)."""
    counts = {}
    for slot in slots:
        component = family.components[slot]
        if component.kind == "scheduler":
            continue
        key = (family.name, slot, json.dumps(configs[slot], sort_keys=True, default=str))
        if key not in _PARAMETER_COUNTS:
            try:
                with _default_dtype_and_device(torch.bfloat16, "meta"):
                    module = _component(component, configs[slot])
            except Exception as err:  # the config's values, not this code: bad input
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ConfigError(f"the {slot} config does not build a {component.cls} "
                                  f"({type(err).__name__}: {first}); correct its config.json, "
                                  "or run --workload.weights tiny") from None
            _PARAMETER_COUNTS[key] = sum(p.numel() for p in module.parameters())
        counts[slot] = _PARAMETER_COUNTS[key]
    return counts


_PARAMETER_COUNTS: dict[tuple, int] = {}


def denoiser_parameter_count(pipeline, family: Family) -> int:
    return sum(p.numel() for p in getattr(pipeline, family.denoiser_slot).parameters())


def parameter_bytes(pipeline) -> int:
    total = 0
    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total
