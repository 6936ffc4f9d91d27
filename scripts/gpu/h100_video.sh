#!/usr/bin/env bash
# Text-to-video on H100s with random full-size weights.
#   bash scripts/gpu/h100_video.sh one    # one GPU: every family (reduced where a full video
#                                         # takes many minutes) and Wan2.1-1.3B at its defaults
#   bash scripts/gpu/h100_video.sh two    # two GPUs: Wan2.1-1.3B at its defaults, 1 GPU and
#                                         # Ulysses 2 on the same host
#   bash scripts/gpu/h100_video.sh compile  # one GPU: Wan2.1-1.3B (33 frames, 10 steps) eager,
#                                         # compiled whole and compiled block by block
cd "$(dirname "$0")/../.."
PACK_NAME=video-$1
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=name,power.limit,driver_version,memory.total --format=csv
t2v() {  # t2v NAME NPROC MODEL ARGS...
  local name=$1 nproc=$2 model=$3; shift 3
  bench "$name" "$nproc" workload:text-to-video --workload.model_id "$model" \
    --workload.weights random --workload.base_dir "$WORK/t2v/$model" --no_save_images "$@"
}
case "$1" in
  one)
    t2v latte 1 maxin-cn/Latte-1 --benchmark_iters 2
    t2v cogvideox-2b 1 THUDM/CogVideoX-2b --workload.inference_steps 20 --benchmark_iters 2
    t2v cogvideox15-5b 1 THUDM/CogVideoX1.5-5B --workload.height 480 --workload.width 848 \
      --workload.num_frames 33 --workload.inference_steps 20 --benchmark_iters 1
    t2v hunyuanvideo 1 tencent/HunyuanVideo --workload.height 544 --workload.width 960 \
      --workload.num_frames 33 --workload.inference_steps 20 --benchmark_iters 1
    t2v wan-1.3b 1 Wan-AI/Wan2.1-T2V-1.3B-Diffusers --benchmark_iters 1
    ;;
  two)
    CUDA_VISIBLE_DEVICES=0 t2v wan-1.3b-1gpu 1 Wan-AI/Wan2.1-T2V-1.3B-Diffusers --benchmark_iters 1
    t2v wan-1.3b-u2 2 Wan-AI/Wan2.1-T2V-1.3B-Diffusers --ulysses_degree 2 --benchmark_iters 1
    ;;
  compile)
    short=(--workload.num_frames 33 --workload.inference_steps 10 --benchmark_iters 2)
    t2v wan-1.3b-short 1 Wan-AI/Wan2.1-T2V-1.3B-Diffusers "${short[@]}"
    t2v wan-1.3b-short-compile-blocks 1 Wan-AI/Wan2.1-T2V-1.3B-Diffusers "${short[@]}" \
      --use_torch_compile --compile_scope blocks
    t2v wan-1.3b-short-compile 1 Wan-AI/Wan2.1-T2V-1.3B-Diffusers "${short[@]}" \
      --use_torch_compile
    ;;
esac
