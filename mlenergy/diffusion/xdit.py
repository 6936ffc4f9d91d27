"""The xDiT side of a run: engine configuration, wrapping a built pipeline, and one call.

Every family goes through its xFuser pipeline class, whatever the weights, so tiny CPU runs
exercise the same xDiT code as full-size GPU runs.
"""

from __future__ import annotations

import torch

from mlenergy.diffusion.plan import RunPlan
from mlenergy.diffusion.xfuser_compat import import_xfuser

# xDiT's default TeaCache threshold.
DEFAULT_CACHE_THRESHOLD = 0.12


def engine_config(plan: RunPlan):
    import_xfuser()
    from xfuser import xFuserArgs

    config = plan.config
    args = xFuserArgs(
        model=plan.spec.model_id,
        ulysses_degree=config.ulysses_degree,
        ring_degree=config.ring_degree,
        height=plan.height,
        width=plan.width,
        num_inference_steps=plan.inference_steps,
        guidance_scale=plan.guidance_scale,
        seed=plan.seed,
        batch_size=plan.batch_size,
        use_torch_compile=config.use_torch_compile,
        use_teacache=config.use_teacache,
        use_fbcache=config.use_fbcache,
        max_sequence_length=plan.max_sequence_length or 256,
    )
    engine, _input = args.create_config()
    engine.runtime_config.dtype = getattr(torch, plan.dtype)
    return engine


def wrap_pipeline(plan: RunPlan, pipeline, engine):
    xfuser = import_xfuser()
    wrapper_cls = getattr(xfuser, plan.spec.family.xfuser_pipeline)
    cache_args = None
    if plan.config.use_teacache or plan.config.use_fbcache:
        cache_args = {
            "use_teacache": plan.config.use_teacache,
            "use_fbcache": plan.config.use_fbcache,
            "rel_l1_thresh": DEFAULT_CACHE_THRESHOLD,
            "return_hidden_states_first": False,
            "num_steps": plan.inference_steps,
        }
    wrapped = wrapper_cls(pipeline, engine, cache_args) if cache_args else wrapper_cls(pipeline, engine)
    wrapped.set_progress_bar_config(disable=True)
    return wrapped


def call_kwargs(plan: RunPlan) -> dict:
    kwargs = dict(
        height=plan.height,
        width=plan.width,
        num_inference_steps=plan.inference_steps,
        guidance_scale=plan.guidance_scale,
        output_type="pil",
        **plan.spec.family.call_kwargs,
    )
    if plan.max_sequence_length is not None:
        kwargs["max_sequence_length"] = plan.max_sequence_length
    return kwargs


def generate(pipeline, plan: RunPlan, prompts: list[str], seed: int, device: torch.device,
             extra_kwargs: dict | None = None):
    """One pipeline call. Returns the images on the rank that holds them, else None."""
    generator = torch.Generator(device=device).manual_seed(seed)
    output = pipeline(prompt=prompts, generator=generator, **call_kwargs(plan),
                      **(extra_kwargs or {}))
    images = getattr(output, "images", None) if output is not None else None
    return list(images) if images is not None else None
