"""Whether the images and videos a run measured hold numbers at all.

A pipeline that computes NaN still takes time and draws power, and diffusers turns NaN pixels
into black images with only a NumPy warning, so without a check its seconds and joules look like
any other run's. That happened on an H200: torchao's FP8 activations take each row's scale from
its largest value, a row of zeros (Wan's padded text tokens) gets scale 0 and quantizes to 0/0;
the run reported 0.73x the energy of bf16 for black videos.

A forward hook on the VAE's decoder (the module the stage hooks time) reduces each decoded
tensor to one "all finite" flag on the device: no synchronisation inside the measured windows.
The flags are read once, after the measured phase. Every rank decodes or not as xDiT has it
(the last rank, or each rank a patch), so the counts are summed over ranks.

If any measured iteration decoded a non-finite value, the point fails on every rank with one
line, before results.json is written: a time and energy of a broken computation is not a
measurement of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlenergy.diffusion.probes.stages import pipeline_parts
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results.sections import Section

@dataclass
class DecodedValues(Section):
    RESULTS_KEY = "decoded_values"

    # Decoder calls of the measured iterations over all ranks, and how many of them output a
    # NaN or an infinity somewhere (0 in every results.json: a run with more fails instead).
    measured_decoder_calls: int
    measured_non_finite: int
    warmup_decoder_calls: int
    warmup_non_finite: int


class NonFiniteOutputs(RuntimeError):
    """Raised on every rank alike; its message says what to do, so no traceback is printed and
    only rank 0 prints it."""

    explained = True
    same_on_every_rank = True


def first_tensor(output) -> torch.Tensor | None:
    """The decoded tensor of a decoder's output: a tensor, diffusers' `DecoderOutput.sample`,
    or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class DecodedValuesProbe:
    """One point's "all finite" flags of every decoder call, per phase."""

    def __init__(self, decoders: list[torch.nn.Module], ranks):
        self.ranks = ranks
        self._phase: bool | None = None  # measured or warm-up; None outside iterations
        self._flags: dict[bool, list[torch.Tensor]] = {False: [], True: []}
        self._handles = [d.register_forward_hook(self._decoded) for d in decoders]

    @classmethod
    def start(cls, plan, gpus, pipeline) -> DecodedValuesProbe:
        return cls(pipeline_parts(pipeline)["decoding"], gpus.ranks)

    def _decoded(self, module, args, output) -> None:
        tensor = first_tensor(output)
        if self._phase is not None and tensor is not None:
            self._flags[self._phase].append(torch.isfinite(tensor).all())

    def begin_iteration(self, measured: bool) -> None:
        self._phase = measured

    def end_iteration(self, measured: bool) -> None:
        self._phase = None

    def _counts(self, measured: bool) -> tuple[int, int]:
        flags = self._flags[measured]
        if not flags:
            return 0, 0
        return len(flags), int((~torch.stack(flags)).sum().item())

    def gather(self, phase) -> DecodedValues | None:
        """Collective: every rank learns the totals, and every rank raises NonFiniteOutputs
        when a measured decoder call output a NaN or an infinity."""
        for handle in self._handles:
            handle.remove()
        per_rank = runtime.all_gather_object((*self._counts(True), *self._counts(False)))
        calls, bad, warm_calls, warm_bad = (sum(column) for column in zip(*per_rank))
        if bad:
            raise NonFiniteOutputs(broken_outputs_line(bad, calls, warm_bad, warm_calls, phase))
        if not self.ranks.is_main:
            return None
        return DecodedValues(measured_decoder_calls=calls, measured_non_finite=bad,
                             warmup_decoder_calls=warm_calls, warmup_non_finite=warm_bad)


def broken_outputs_line(bad: int, calls: int, warm_bad: int, warm_calls: int, phase) -> str:
    """One line: what was found, what was not written, where to look."""
    times = phase.iteration_times  # rank 0's; empty elsewhere
    measured = (f" (they measured {sum(times) / len(times):.3f} s per iteration)"
                if times else "")
    return (f"{bad} of {calls} decoder outputs of the measured iterations hold NaN or infinite "
            f"values ({warm_bad} of {warm_calls} in warm-up): the pipeline decodes no usable "
            f"output at these settings, so no results.json is written{measured}; check the "
            "weights and the options that change the arithmetic (--quantize_denoiser, "
            "--use_fp8_t5_encoder, --workload.dtype)")
