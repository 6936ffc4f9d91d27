"""The xDiT side of a run: engine configuration, wrapping a built pipeline, and one call.

Every family goes through xDiT, whatever the weights, so tiny CPU runs exercise the same xDiT
code as full-size GPU runs: its pipeline class where xDiT has one, otherwise the diffusers
pipeline with xDiT's sequence-parallel transformer in the denoiser slot.
"""

from __future__ import annotations

import importlib

import torch

from mlenergy.diffusion.engine import options_apply
from mlenergy.diffusion.planning.run_plan import RunPlan
from mlenergy.diffusion.process import watchdog
from mlenergy.diffusion.process.xfuser_compat import import_xfuser, make_ring_attention_traceable


def engine_config(plan: RunPlan):
    import_xfuser()
    from xfuser import xFuserArgs

    options = plan.options
    args = xFuserArgs(
        model=plan.spec.model_id,
        ulysses_degree=plan.ulysses_degree,
        ring_degree=plan.ring_degree,
        height=plan.height,
        width=plan.width,
        num_inference_steps=plan.inference_steps,
        guidance_scale=plan.guidance_scale,
        seed=plan.seed,
        batch_size=plan.batch_size,
        use_torch_compile=options.compile_through_xdit,
        use_teacache=options.use_teacache,
        use_fbcache=options.use_fbcache,
        use_fp8_t5_encoder=options.use_fp8_t5_encoder,
        enable_sequential_cpu_offload=options.enable_sequential_cpu_offload,
        attention_backend=options_apply.xfuser_backend_name(plan),
        max_sequence_length=plan.max_sequence_length or 256,
        **({"num_frames": plan.num_frames} if plan.task.is_video else {}),
    )
    engine, _input = args.create_config()
    engine.runtime_config.dtype = getattr(torch, plan.dtype)
    return engine


def denoiser_class(plan: RunPlan):
    """xDiT's sequence-parallel denoiser class where the family needs it built in, else None."""
    path = plan.spec.family.xfuser_transformer
    if path is None:
        return None
    import_xfuser()
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def wrap_pipeline(plan: RunPlan, pipeline, engine):
    """xDiT's pipeline class around a built diffusers pipeline. xDiT applies the step cache and
    then, with --use_torch_compile at transformer scope, wraps the denoiser's forward in
    torch.compile (compiled at the first call); other compilation is
    `options_apply.compile_denoiser`'s,
    after this."""
    xfuser = import_xfuser()
    if plan.options.use_torch_compile and plan.ring_degree > 1:
        # Before the first call, when compilation happens, whatever scope compiles.
        make_ring_attention_traceable()
    if plan.spec.family.xfuser_pipeline is None:
        # The denoiser is already xDiT's; it reads the parallel layout from the runtime state.
        from xfuser.core.distributed import initialize_runtime_state

        initialize_runtime_state(pipeline, engine)
        # xDiT's groups exist now (its runtime state makes them): tighten their timeouts.
        watchdog.tighten_every_group()
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    wrapper_cls = getattr(xfuser, plan.spec.family.xfuser_pipeline)
    cache_args = None
    if plan.options.step_cache:
        cache_args = {
            "use_teacache": plan.options.use_teacache,
            "use_fbcache": plan.options.use_fbcache,
            "rel_l1_thresh": plan.options.cache_threshold,
            "return_hidden_states_first": False,
            "num_steps": plan.inference_steps,
        }
    with options_apply.compile_arguments(plan) as compile_calls:
        wrapped = (wrapper_cls(pipeline, engine, cache_args) if cache_args
                   else wrapper_cls(pipeline, engine))
    watchdog.tighten_every_group()  # the wrapper made xDiT's groups
    if plan.options.compile_through_xdit and not compile_calls:
        raise RuntimeError(f"--use_torch_compile: xDiT's {wrapper_cls.__name__} compiled nothing "
                           "(the installed xfuser does not compile this family)")
    wrapped.set_progress_bar_config(disable=True)
    return wrapped


def call_kwargs(plan: RunPlan, steps: int | None = None) -> dict:
    kwargs = dict(
        height=plan.height,
        width=plan.width,
        num_inference_steps=steps or plan.inference_steps,
        guidance_scale=plan.guidance_scale,
        output_type="pil",
        **plan.spec.family.call_kwargs,
    )
    if plan.max_sequence_length is not None:
        kwargs["max_sequence_length"] = plan.max_sequence_length
    if plan.task.is_video:
        kwargs[plan.spec.family.frames_argument] = plan.num_frames
    return kwargs


def generate(pipeline, plan: RunPlan, prompts: list[str], seed: int, device: torch.device,
             steps: int | None = None, extra_kwargs: dict | None = None):
    """One pipeline call (of `steps` denoising steps, default the plan's; `extra_kwargs` such as
    a step-end callback). Returns its images (or videos, each a list of frames) on the ranks
    that hold them, else None."""
    generator = torch.Generator(device=device).manual_seed(seed)
    output = pipeline(prompt=prompts, generator=generator, **call_kwargs(plan, steps),
                      **(extra_kwargs or {}))
    if output is None:
        return None
    outputs = getattr(output, plan.task.output_attribute, None)
    # Ranks that do not decode get None, or a list of None (xDiT's video pipelines).
    if outputs is None or all(o is None for o in outputs):
        return None
    return list(outputs)
