"""Combining ranks' stage records and averaging them, on hand-made records."""

from __future__ import annotations

import pytest

from mlenergy.diffusion.probes import stage_records, stages


def rank_record(text, denoise, decode, energy=None, node_gpu="0"):
    def stage(t, calls):
        gpu = None if energy is None or not calls else {node_gpu: energy * t}
        return {"time_s": t, "energy_j": None if gpu is None else sum(gpu.values()),
                "gpu_energy_j": gpu, "calls": calls}
    return {"stages": {"text_encoding": stage(text, 2 if text else 0),
                       "denoising": stage(denoise, 4 if denoise else 0),
                       "decoding": stage(decode, 1 if decode else 0)},
            "boundaries": [["text_encoding", 0.0, text], ["denoising", text, text + denoise]]
            + ([["decoding", text + denoise, text + denoise + decode]] if decode else []),
            "steps": {"latency_s": [denoise / 4] * 4}, "denoiser_forwards": 4 if denoise else 0,
            "window": [0.0, text + denoise + decode + 0.05]}


def test_stages_come_from_the_rank_that_ran_the_most():
    # Rank 1 decodes; its denoising window is the one that ends where decoding starts.
    rank0 = rank_record(0.1, 2.5, 0.0)
    rank1 = rank_record(0.1, 2.0, 0.3)
    [combined] = stage_records.combine_ranks([[rank0], [rank1]], ranks_per_node=2)
    assert {s: v["rank"] for s, v in combined["stages"].items()} == {
        "text_encoding": 1, "denoising": 1, "decoding": 1}
    assert combined["stages"]["denoising"]["time_s"] == 2.0
    stage_records.add_remainder(combined, None)
    assert combined["stages"]["remainder"] == {"time_s": pytest.approx(0.05), "energy_j": None}
    assert combined["window"] == rank1["window"] and combined["rank"] == 1


def test_energy_across_two_nodes_adds_each_nodes_gpus():
    node0 = rank_record(0.1, 2.0, 0.3, energy=100.0, node_gpu="0")
    node1 = rank_record(0.1, 2.0, 0.0, energy=100.0, node_gpu="1")
    [combined] = stage_records.combine_ranks([[node0], [node1]], ranks_per_node=1)
    assert combined["stages"]["denoising"]["gpu_energy_j"] == {"0": 200.0, "1": 200.0}
    assert combined["stages"]["denoising"]["energy_j"] == 400.0
    # Node 1 did not decode: decoding energy of the whole run is unknown, not node 0's alone.
    assert combined["stages"]["decoding"]["energy_j"] is None


def test_breakdown_means_and_unmeasured_energy():
    a = rank_record(0.1, 2.0, 0.3, energy=100.0)
    b = rank_record(0.3, 2.2, 0.3, energy=100.0)
    b["stages"]["decoding"]["energy_j"] = None
    for record, energy in ((a, 300.0), (b, 300.0)):
        stage_records.add_remainder(record, energy)
    breakdown = stage_records.stage_breakdown([a, b])
    assert breakdown["text_encoding"] == {"time_s": pytest.approx(0.2), "energy_j": pytest.approx(20.0)}
    assert breakdown["decoding"]["energy_j"] is None  # one iteration did not measure it
    assert a["stages"]["remainder"]["energy_j"] == pytest.approx(300.0 - 10.0 - 200.0 - 30.0)
    assert b["stages"]["remainder"]["energy_j"] is None
    assert breakdown["remainder"]["time_s"] == pytest.approx(0.05)


def test_counter_windows_that_did_not_move_are_unmeasured():
    assert stages.energy_between({"0": 10.0}, {"0": 12.5}) == {"0": 2.5}
    assert stages.energy_between({"0": 10.0, "1": 5.0}, {"0": 12.5, "1": 5.0}) is None
    assert stages.energy_between(None, {"0": 1.0}) is None


def test_short_windows_fall_back_to_instant_power_and_say_so():
    start = stages._Mark(wall=100.0, energy={"0": 50.0}, power={"0": 300.0})
    moved = stages._Mark(wall=100.02, energy={"0": 56.0}, power={"0": 340.0})
    still = stages._Mark(wall=100.02, energy={"0": 50.0}, power={"0": 340.0})
    assert stages.window_energy(start, moved) == ({"0": pytest.approx(6.0)}, "counter")
    energy, method = stages.window_energy(start, still)
    assert method == "instant power x time" and energy == {"0": pytest.approx(320.0 * 0.02)}
    no_power = stages._Mark(wall=100.02, energy={"0": 50.0}, power=None)
    assert stages.window_energy(start, no_power) == (None, None)


class _FakeGPUs:
    def get_total_energy_consumption(self, index):
        return 1_000_000 + 1000 * index  # mJ

    def get_instant_power_usage(self, index):
        if index == 1:
            raise RuntimeError("not supported")
        return 350_000  # mW


def _counters(count: int) -> stages.EnergyCounters:
    """Counters of the third node's GPUs (node rank 2, 2 GPUs a node: global keys 4 and 5),
    read through Zeus's device layer (here a stand-in with Zeus's units, mJ and mW)."""
    import torch

    from mlenergy.diffusion.probes.gpus import NvidiaAccess, RunGpus
    from mlenergy.diffusion.process.runtime import Ranks

    access = NvidiaAccess(count)
    access._zeus_gpus = _FakeGPUs()
    ranks = Ranks(rank=4, world_size=6, local_rank=0, local_world_size=2,
                  device=torch.device("cpu"))
    gpus = RunGpus(ranks, access)
    gpus.count = count
    return stages.EnergyCounters(gpus)


def test_counters_read_joules_and_watts_of_every_node_gpu_under_global_keys():
    energy, power = _counters(2).read()
    assert energy == {"4": 1000.0, "5": 1001.0}
    assert power is None  # one GPU's power is unreadable: no fallback rather than half of one
    assert _counters(1).read() == ({"4": 1000.0}, {"4": 350.0})
