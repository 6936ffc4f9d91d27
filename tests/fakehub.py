"""Hugging Face hub stand-ins for tests that cannot reach the hub: a cache laid out as
huggingface_hub lays it out, filled with real pipelines saved by `save_pretrained`, and a local
HTTP server that answers hub requests the way the hub refuses them (gated, missing, ...), so
that huggingface_hub's own code raises its own errors."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from mlenergy.diffusion.models.pipelines import build_pipeline
from mlenergy.diffusion.models.registry import MODELS

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
SCHNELL = "black-forest-labs/FLUX.1-schnell"

# FLUX.1-schnell's published configs (the files of its hub repository, trimmed of nothing that
# matters here): a FluxPipeline whose scheduler does not shift by resolution and whose
# transformer has no guidance embedding.
SCHNELL_CONFIGS = {
    "model_index.json": {
        "_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler/scheduler_config.json": {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
        "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0,
        "use_dynamic_shifting": False,
    },
    "transformer/config.json": {
        "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0.dev0",
        "attention_head_dim": 128, "guidance_embeds": False, "in_channels": 64,
        "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
        "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0",
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True,
        "in_channels": 3, "latent_channels": 16, "latents_mean": None, "latents_std": None,
        "layers_per_block": 2, "mid_block_add_attention": True, "norm_num_groups": 32,
        "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.3611,
        "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "use_post_quant_conv": False, "use_quant_conv": False,
    },
}


def save_tiny_flux(directory: Path, bias_shift: float = 0.0, variant: str | None = None) -> Path:
    """A tiny FLUX pipeline saved by save_pretrained; `bias_shift` is added to the transformer's
    output bias, so that tests can tell which saved weights were loaded."""
    pipe = build_pipeline(MODELS[FLUX_DEV], "tiny", dtype=torch.float32, device="cpu",
                          max_sequence_length=16)
    with torch.no_grad():
        pipe.transformer.proj_out.bias += bias_shift
    pipe.save_pretrained(directory, variant=variant)
    return Path(directory)


def repo_cache(hf_home: Path, repo_id: str) -> Path:
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def add_snapshot(hf_home: Path, repo_id: str, commit: str, source: Path | None = None,
                 files: dict | None = None, refs: tuple[str, ...] = ("main",)) -> Path:
    """One revision of a repository in the cache: `snapshots/<commit>/` with a copy of `source`
    and/or JSON `files`, and `refs/<ref>` naming the commit."""
    repo = repo_cache(hf_home, repo_id)
    snapshot = repo / "snapshots" / commit
    if source is not None:
        shutil.copytree(source, snapshot, dirs_exist_ok=True)
    for name, doc in (files or {}).items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(json.dumps(doc))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


class RefusingHub:
    """A local endpoint (HF_ENDPOINT) that refuses repositories as the hub does: status code
    plus the `X-Error-Code` header huggingface_hub reads. `answers` maps repo id to (status,
    error code)."""

    def __init__(self, answers: dict[str, tuple[int, str]]):
        answers_ = answers

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                parts = self.path.lstrip("/").split("/")
                status, code = answers_.get("/".join(parts[:2]), (404, "RepoNotFound"))
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RefusingHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
