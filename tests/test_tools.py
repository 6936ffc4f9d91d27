"""The tools around the benchmark read like one tool: `check` walks a tree as `report` does and
counts what passed; measurements and FLOPs in words; `report` without matplotlib still gives
its table; every subcommand's usage line, repeated flags and error hints alike; `quality` names
no flag the user did not type; `presets` lists and prints download commands; a closed pipe ends
a command quietly; and the README's command table agrees with each subcommand's --help."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_FLUX, offline_env, scripted_run, with_flags
from mlenergy.diffusion.cli import COMMANDS
from test_toolkit import FIXTURES


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.cli", *args], cwd=REPO,
                          env=offline_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """One finished run on a scripted GPU: complete, with the whole measurement."""
    tmp = tmp_path_factory.mktemp("scripted")
    return scripted_run(tmp, [*with_flags(TINY_FLUX, "--workload.batch_size", "1"),
                              "--benchmark_iters", "3", "--idle_baseline_s", "0.3"],
                        {"power_w": [300.0]})


def test_check_walks_a_tree_and_counts_passes_and_failures(gpu_run, tmp_path):
    tree = tmp_path / "tree"
    good = tree / "a" / gpu_run.run_dir.name
    shutil.copytree(gpu_run.run_dir, good)
    shutil.copytree(gpu_run.run_dir, tree / "b" / gpu_run.run_dir.name)
    broken = tree / "b" / gpu_run.run_dir.name
    (broken / "requests.json").unlink()
    (tree / "c").mkdir()
    (tree / "c" / "results.json").write_text('{"model_id": "x/y", "batch')  # truncated
    proc = cli("check", str(tree), tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-1] == "3 run(s) checked: 1 passed, 2 failed"
    assert re.search(rf"^ok   {re.escape(str(good))}: 0\.\d+ s/image, [\d.]+ J/image on "
                     r"Scripted GPU$", proc.stdout, re.M), proc.stdout
    assert f"FAIL {broken}: requests.json is missing" in proc.stderr
    assert f"FAIL {tree / 'c'}: requests.json is missing" in proc.stderr
    one = cli("check", str(good), tmp_path=tmp_path)
    assert one.returncode == 0 and one.stdout.splitlines()[-1] == (
        "1 run(s) checked: 1 passed, 0 failed")
    empty = cli("check", str(tmp_path / "tree" / "c" / "nothing"), str(tmp_path / "none"),
                tmp_path=tmp_path)
    assert empty.returncode == 1 and "0 passed, 2 failed" in empty.stdout
    assert "results.json is missing, and no run directory lies under it" in empty.stderr


def test_check_measurement_is_in_words_with_flops_scaled(gpu_run, tmp_path):
    proc = cli("check", "--measurement", str(gpu_run.root), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{gpu_run.run_dir}:"
    for line in lines:  # no dict, list or None/True/False of a Python repr (paths aside)
        line = line.replace(str(gpu_run.run_dir), "RUN_DIR")
        assert not re.search(r"[{\[]'|': |\b(None|True|False)\b", line), line
    floor = next(line for line in lines if line.strip().startswith("floor"))
    flops = gpu_run.doc["physical_floor"]["flops_per_forward"]
    assert 1e6 <= flops < 1e9  # a tiny model: millions, which 1e-12 x TFLOP would print as 0.00
    assert re.search(rf"floor +{flops / 1e6:.3g} MFLOP/forward \(analytic [\d.]+ MFLOP\), "
                     r"[\d.]+ [kMG]FLOP/s achieved, MFU n/a, [\d.]+ [µnm]J/FLOP", floor), floor
    assert "0.00 TFLOP" not in proc.stdout and "e-0" not in proc.stdout
    exclusive = next(line for line in lines if line.strip().startswith("exclusive"))
    assert exclusive.split(None, 1)[1] == "yes, no other process on the run's GPUs"
    steady = next(line for line in lines if line.strip().startswith("steady"))
    assert re.fullmatch(r" +steady +(yes|NO) \(CV of latency [\d.]+%, of energy [\d.]+%; "
                        r"limit 5\.0%\)", steady), steady
    # The run's own summary says the same in the same units.
    summary = gpu_run.run_dir.joinpath("driver_log.txt").read_text()
    assert re.search(rf"FLOP / forward +{flops / 1e6:.3g} MFLOP", summary)


def test_check_measurement_takes_the_runs_own_self_check_verdict(gpu_run, tmp_path):
    """The run judged its timeline self-check and wrote the verdict: `check` takes it, with no
    tolerance of its own; results that carry no verdict are judged at the run's tolerance."""
    import json

    def check(name: str, **timeline_check) -> subprocess.CompletedProcess:
        run_dir = tmp_path / name / gpu_run.run_dir.name
        shutil.copytree(gpu_run.run_dir, run_dir)
        doc = json.loads((run_dir / "results.json").read_text())
        written = doc["energy_cross_check"]["timeline"]
        del written["within_tolerance"], written["tolerance"]
        written.update(timeline_check)
        (run_dir / "results.json").write_text(json.dumps(doc))
        return cli("check", "--measurement", str(run_dir), tmp_path=tmp_path)

    # 0.1% off, but the run judged at 0.05% and failed it: so does the check.
    strict = check("strict", relative_difference=0.001, within_tolerance=False, tolerance=0.0005)
    assert strict.returncode == 1
    assert strict.stderr.splitlines() == [f"FAIL {tmp_path / 'strict' / gpu_run.run_dir.name}: "
                                          "timeline cross-check differs by +0.10%"]
    assert check("older", relative_difference=0.001).returncode == 0
    too_far = check("older-far", relative_difference=-0.05)
    assert too_far.returncode == 1 and "timeline cross-check differs by -5.00%" in too_far.stderr


def test_report_without_matplotlib_prints_its_table_and_says_how_to_get_plots(tmp_path):
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named "
                                         "'matplotlib'\", name='matplotlib')\n")
    env = offline_env(tmp_path, PYTHONPATH=f"{blocker.parent}{os.pathsep}{REPO}")
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.cli", "report",
                           str(FIXTURES), "--out_dir", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "# Benchmark report: 4 run(s)" in proc.stdout and "plot:" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "note: plots not drawn: they need matplotlib (pip install -e '.[report]'); or pass "
        "--no_plots"]
    assert (tmp_path / "out" / "runs.csv").is_file() and (tmp_path / "out" / "report.md").is_file()
    assert not list((tmp_path / "out").glob("*.png"))


def test_report_help_and_the_command_table_name_the_report_extra(tmp_path):
    helped = cli("report", "--help", tmp_path=tmp_path)
    assert helped.returncode == 0 and "pip install -e '.[report]'" in helped.stdout
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| `mlenergy-diffusion report"))
    assert "`[report]` extra" in row and "pip install -e '.[report]'" in row


@pytest.mark.parametrize("argv", [
    ["report", "RUN", "--no_plots", "--no_plots"],
    ["report", "RUN", "--out_dir", "a", "--out_dir=b"],
    ["check", "--measurement", "RUN", "--measurement"],
    ["quality", "RUN", "RUN", "--write", "--write"],
    ["models", "--json", "--json"],
])
def test_every_tool_refuses_a_repeated_flag_in_one_line(argv, tmp_path):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    proc = cli(*argv, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "given twice" in lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_says_mlenergy_diffusion_in_its_usage_line(command, tmp_path):
    proc = cli(command, "--help", tmp_path=tmp_path, COLUMNS="200")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: mlenergy-diffusion {command} "), proc.stdout[:200]
    bad = cli(command, "--no_such_flag", tmp_path=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert lines[0].endswith(f"; see `mlenergy-diffusion {command} --help`"), lines


def test_errors_point_at_the_command_a_user_types(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark", "workload:t2i",
                          "--workload.batch_size", "two"], cwd=REPO, env=offline_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.rstrip().endswith(
        "see `mlenergy-diffusion run --help`")
    sweep = cli("sweep", "--models", "black-forest-labs/FLUX.1-dev", "--batch_sizes", "1",
                "--parallel", "1x1", "--dry_run", "--", "--no_such_flag", tmp_path=tmp_path)
    assert sweep.returncode == 2
    assert "mlenergy-diffusion run --help" in sweep.stderr
    assert "python -m mlenergy.diffusion.benchmark" not in sweep.stderr


def test_quality_errors_name_what_the_user_typed(gpu_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(gpu_run.run_dir, other)
    missing = cli("quality", str(gpu_run.run_dir), str(tmp_path / "nowhere"), tmp_path=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"error: the reference run {tmp_path / 'nowhere'}: no such "
                                      "directory; point it at a finished run directory")
    import json

    doc = json.loads((other / "results.json").read_text())
    doc["iterations"] = doc["iterations"][:1]
    (other / "results.json").write_text(json.dumps(doc))
    fewer = cli("quality", str(gpu_run.run_dir), str(other), tmp_path=tmp_path)
    assert fewer.returncode == 2 and "fewer than this run's 3" in fewer.stderr
    for proc in (missing, fewer):
        assert "--reference_run" not in proc.stderr and "--benchmark_iters" not in proc.stderr


def test_presets_lists_the_presets_and_prints_download_commands(tmp_path):
    listed = cli("presets", tmp_path=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("leaderboard: ")
    assert "\nleaderboard-v3: 7 image models x 5 batch sizes x 10 degrees" in listed.stdout
    v3 = cli("presets", "leaderboard-v3", tmp_path=tmp_path)
    lines = v3.stdout.splitlines()
    assert len(lines) == 13 and all(line.startswith("hf download ") for line in lines)
    assert lines[0] == (
        "hf download black-forest-labs/FLUX.1-dev --include model_index.json 'scheduler/*' "
        "'text_encoder/*' 'text_encoder_2/*' 'tokenizer/*' 'tokenizer_2/*' 'transformer/*' "
        "'vae/*' --exclude '*.msgpack' '*.onnx' '*.onnx_data' '*.pb'")
    hunyuan = next(line for line in lines if "tencent/HunyuanVideo" in line)
    assert "--revision refs/pr/18 --include" in hunyuan
    latte = next(line for line in lines if "maxin-cn/Latte-1" in line)
    assert "'vae_temporal_decoder/*'" in latte
    bad = cli("presets", "nope", tmp_path=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: no preset 'nope'; choose one of leaderboard, leaderboard-v3 "
        "(`mlenergy-diffusion presets` lists them)"]


@pytest.mark.parametrize("argv", [
    ["-m", "mlenergy.diffusion.cli", "run", "--help"],
    ["-m", "mlenergy.diffusion.cli", "models"],
    ["-m", "mlenergy.diffusion.sweep.presets", "leaderboard-v3"],
    ["-m", "mlenergy.diffusion.tools.report", "--help"],
])
def test_a_reader_that_stops_early_gets_no_traceback(argv, tmp_path):
    """As `... | head` once head has its lines: stdout is a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=offline_env(tmp_path),
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]


def _readme_commands() -> dict[str, str]:
    """The README's command table: subcommand -> its first column (the usage it shows)."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| command | what it does | also spelled |"):]
    rows = re.findall(r"^\| `mlenergy-diffusion (\w+)([^`]*)` \|", table.split("\n\n")[0], re.M)
    return {command: usage.strip() for command, usage in rows}


def test_the_readme_command_table_and_each_subcommands_help_agree(tmp_path):
    commands = _readme_commands()
    assert list(commands) == list(COMMANDS)
    listed = cli("--help", tmp_path=tmp_path).stdout
    for command, shown in commands.items():
        assert re.search(rf"^  {command} ", listed, re.M), command
        helped = cli(command, "--help", tmp_path=tmp_path, COLUMNS="200").stdout
        usage = helped.splitlines()[0]
        # Each positional the table shows (RUN_DIR, REFERENCE_DIR, NAME) is the help's own.
        for word in re.findall(r"\b[A-Z][A-Z_]+\b", shown):
            assert word in usage, (command, word, usage)
        # Each flag the help offers is documented in the README.
        readme = (REPO / "README.md").read_text()
        offered = re.findall(r"^[│┃ ]*(--[a-z][\w.]*)(?:, (--[a-z][\w.]*))?", helped, re.M)
        flags = {flag for pair in offered for flag in pair if flag} - {"--help"}
        assert flags or command in ("presets",), (command, helped)
        # A switch is documented by its on or its off spelling.
        spellings = lambda f: {f, f.replace("--no_", "--", 1), f"--no_{f[2:]}"}
        undocumented = [f for f in flags if not any(f"`{s}" in readme for s in spellings(f))]
        assert not undocumented, (command, undocumented)


def test_the_readme_names_the_sweep_log_where_the_sweep_writes_it(tmp_path):
    from mlenergy.diffusion.planning.plan import default_base_dir
    from mlenergy.diffusion.sweep.local import log_path
    from mlenergy.diffusion.sweep.point import Point

    out = tmp_path / "run"
    params = "batch-1+size-64x64+steps-1+seed-48105+uly-1+ring-1+tc-False"
    point = Point(model_id="black-forest-labs/FLUX.1-dev", batch_size=1, ulysses_degree=1,
                  ring_degree=1, options="", benchmark_args=[],
                  run_dir=default_base_dir("text-to-image", "black-forest-labs/FLUX.1-dev",
                                           out) / params)
    written = log_path(out, point).relative_to(out)
    shown = re.search(r"output is in\s+`OUT_DIR/(sweep_logs/[^`]+)`",
                      (REPO / "README.md").read_text()).group(1)
    assert written == Path("sweep_logs/diffusion/text-to-image/black-forest-labs/FLUX.1-dev/"
                           f"{params}.log")
    assert Path(shown.replace("<task>", "text-to-image").replace("<org>", "black-forest-labs")
                .replace("<model>", "FLUX.1-dev").replace("<params>", params)) == written
