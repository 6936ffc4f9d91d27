"""The report's plots cannot mislead: one series per configuration and campaign, every point
labelled, shared-node and unsteady points marked, intervals clipped at zero, axes from zero.

The tree holds two campaigns of the same H100 configurations (tests/fixtures/h100, the second
with other numbers), one run that shared its node, one unsteady run, one whose energy interval
reaches below zero, and the tiny CPU runs (tests/fixtures/cpu_tiny) for the throughput plot. The
figures are read back from matplotlib itself: what is drawn, not what was meant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as pyplot  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from mlenergy.diffusion.tools import report, report_plots  # noqa: E402
from test_report import CPU_FIXTURES, FLUX_DIR, H100_STEM  # noqa: E402
from test_toolkit import FIXTURES  # noqa: E402

U1, U4, U2R2 = ("batch-1+size-1024x1024+steps-28+seed-48105+uly-1+ring-1+tc-False+weights-random",
                "batch-1+size-1024x1024+steps-28+seed-48105+uly-4+ring-1+tc-False+weights-random",
                "batch-1+size-1024x1024+steps-28+seed-48105+uly-2+ring-2+tc-False+weights-random")
FLUX_REL = FLUX_DIR.relative_to(FIXTURES / "run")


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _slower(doc: dict) -> None:
    """Another campaign's numbers for the same configuration: 20% slower, 10% less energy."""
    for window in doc["iteration_energy_measurements"]:
        window["time"] *= 1.2
        window["gpu_energy"] = {gpu: j * 0.9 for gpu, j in window["gpu_energy"].items()}


def campaign_tree(root: Path) -> Path:
    """Two H100 campaigns of the same three FLUX configurations, with caveats, and CPU runs."""
    shutil.copytree(FIXTURES / "run", root / "first")
    shutil.copytree(FIXTURES / "run", root / "second")
    second = root / "second" / FLUX_REL
    for name in (U1, U4, U2R2):
        _edit(second / name / "results.json", _slower)
    _edit(second / U4 / "results.json", lambda d: d.update(
        shared_node_runs=[{"run_dir": "elsewhere", "devices": ["4", "5"]}]))
    _edit(second / U2R2 / "results.json", lambda d: d.update(
        steadiness={"steady": False, "latency_cv": 0.08, "energy_cv": 0.07, "cv_limit": 0.05}))
    # An energy interval wider than the mean: its lower end must not be drawn below zero.
    _edit(root / "first" / FLUX_REL / U1 / "results.json",
          lambda d: d["energy_per_iteration"].update(stdev=9000.0))
    shutil.copytree(CPU_FIXTURES / "run", root / "cpu")
    cpu = root / "cpu" / FLUX_REL
    runs = sorted(p for p in cpu.iterdir() if p.is_dir())
    _edit(runs[0] / "results.json", lambda d: d.update(shared_node_runs=[{"run_dir": "x"}]))
    _edit(runs[-1] / "results.json", lambda d: d["steadiness"].update(steady=False))
    return root


class _KeptFigures:
    """matplotlib.pyplot for the plot functions, keeping each figure instead of closing it."""

    def __init__(self):
        self.figures = []

    def subplots(self, *args, **kwargs):
        return pyplot.subplots(*args, **kwargs)

    def close(self, fig):
        self.figures.append(fig)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """(table, {kind: figure} for the H100 FLUX group, {kind: figure} for the CPU group)."""
    root = campaign_tree(tmp_path_factory.mktemp("campaigns") / "tree")
    df = report.load_table(root)
    kept = {}
    for device in ("NVIDIA H100 80GB HBM3", "CPU (AMD EPYC)"):
        group = df[(df["device"] == device) & (df["task"] == "text-to-image")]
        first = group.iloc[0]
        plt = _KeptFigures()
        for kind, plot in (("pareto", report_plots.plot_pareto),
                           ("gpus", report_plots.plot_scaling),
                           ("throughput", report_plots.plot_throughput)):
            if plot(group, report_plots.group_title(first), "image",
                    tmp_path_factory.mktemp(kind) / f"{kind}.png", plt) is not None:
                kept.setdefault(device, {})[kind] = plt.figures[-1]
    yield df, kept["NVIDIA H100 80GB HBM3"], kept["CPU (AMD EPYC)"]
    pyplot.close("all")


def _axes(drawn_figures: dict):
    return [ax for fig in drawn_figures.values() for ax in fig.axes]


def test_the_same_configuration_of_two_campaigns_is_two_series_never_one_zigzag(drawn):
    df, h100, _ = drawn
    assert set(df[df["device"] == "NVIDIA H100 80GB HBM3"]["campaign"]) == {"first", "second"}
    for ax in h100["gpus"].axes:
        lines = {line.get_label(): line for line in ax.get_lines()
                 if not line.get_label().startswith("_")}
        assert set(lines) == {"batch 1 (first)", "batch 1 (second)"}
        for line in lines.values():
            xs = list(line.get_xdata())
            assert xs == sorted(set(xs)), xs  # one value per count: no line doubles back
    pareto_legend = [t.get_text() for t in h100["pareto"].axes[0].get_legend().get_texts()]
    assert "first: runs (95% CI)" in pareto_legend and "second: runs (95% CI)" in pareto_legend


def test_every_point_is_labelled_and_caveats_are_marked(drawn):
    _, h100, cpu = drawn
    for figures in (h100, cpu):
        for ax in _axes(figures):
            labels = [t.get_text() for t in ax.texts]
            drawn_points = [line for line in ax.get_lines() if line.get_marker() == "o"]
            assert len(labels) == sum(len(line.get_xdata()) for line in drawn_points), labels
            assert all(label.strip() for label in labels)
    pareto = h100["pareto"].axes[0]
    labels = [t.get_text() for t in pareto.texts]
    assert "b1 u4r1 [shared]" in labels and "b1 u2r2 [unsteady]" in labels
    legend = [t.get_text() for t in pareto.get_legend().get_texts()]
    assert report_plots.SHARED_LABEL in legend and report_plots.UNSTEADY_LABEL in legend
    throughput = [t.get_text() for t in cpu["throughput"].axes[0].texts]
    assert "b1 u1r1 [shared, unsteady]" in throughput and "b2 u2r1 [unsteady]" in throughput


def test_intervals_are_clipped_at_zero_and_axes_start_at_zero(drawn):
    df, h100, cpu = drawn
    wide = df[df["run_dir"].str.endswith(f"/first/{FLUX_REL}/{U1}")]
    assert wide["energy_per_output_ci95_low_j"].iloc[0] < 0  # the table keeps the number
    for ax in _axes(h100) + _axes(cpu):
        assert ax.get_ylim()[0] == 0 and ax.get_xlim()[0] == 0, ax.get_title()
        for bars in (c for c in ax.collections if isinstance(c, LineCollection)):
            assert all(y >= 0 and x >= 0 for segment in bars.get_segments()
                       for x, y in segment)


def test_the_report_writes_the_plots_a_person_opens(tmp_path):
    root = campaign_tree(tmp_path / "tree")
    written = report.write_report(root, tmp_path / "out")["plots"]
    names = {p.name for p in written}
    assert {f"{H100_STEM}-pareto.png", f"{H100_STEM}-gpus.png"} <= names
    assert all(p.stat().st_size > 10_000 for p in written)
