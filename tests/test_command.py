"""`mlenergy-diffusion`: the console script, its subcommands, --version and provenance, and the
original README's launch commands."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ENTRY, REPO, offline_env
from mlenergy.diffusion import __version__
from mlenergy.diffusion.inputs.config import TextToImage, parse_cli
from mlenergy.diffusion.models.registry import MODELS, known_model_ids
from mlenergy.diffusion.output import provenance


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.cli", *args], cwd=REPO,
                          env=offline_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=300)


def test_pyproject_installs_the_console_script_and_reads_the_version_from_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"mlenergy-diffusion": "mlenergy.diffusion.cli:main"}
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[name]), name) == __version__


def test_help_lists_every_subcommand(tmp_path):
    proc = cli("--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^  (\w+) ", proc.stdout, flags=re.M)
    assert listed == ["run", "sweep", "report", "quality", "check", "models", "presets"]
    bare = cli(tmp_path=tmp_path)
    assert bare.returncode == 2 and "usage: mlenergy-diffusion" in bare.stderr


def test_an_unknown_subcommand_is_one_line_and_exit_2(tmp_path):
    proc = cli("benchmark", tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: unknown command 'benchmark'; choose one of run, sweep, report, quality, check, "
        "models, presets (`mlenergy-diffusion --help`)"]


def test_version_names_the_commit_of_this_checkout(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    proc = cli("--version", tmp_path=tmp_path)
    assert proc.returncode == 0
    assert re.fullmatch(rf"mlenergy-diffusion {re.escape(__version__)} \(git {head[:12]}"
                        r"(, with uncommitted changes)?\)\n", proc.stdout), proc.stdout
    assert provenance.git_commit() == head


def test_outside_a_git_checkout_there_is_no_commit(tmp_path):
    """An installed copy (here: the package copied out of the repository) has no commit to
    report, rather than the commit of whatever repository surrounds it."""
    shutil.copytree(REPO / "mlenergy", tmp_path / "copy" / "mlenergy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import json; from mlenergy.diffusion.output import provenance; "
              "print(json.dumps(provenance.describe().to_results())); "
              "print(provenance.version_text())")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          env=offline_env(tmp_path, PYTHONPATH=str(tmp_path / "copy")),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    described, version = proc.stdout.splitlines()
    described = json.loads(described)
    assert described["benchmark_version"] == __version__
    assert described["git_commit"] is None and described["git_dirty"] is None
    assert described["command_line"].endswith(f"-c {shlex.quote(script)}")
    assert version == f"mlenergy-diffusion {__version__}"


def test_under_torchrun_the_command_line_is_the_launchers(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("from mlenergy.diffusion.output import provenance\n"
                      "print('COMMAND', provenance.command_line())\n")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                           "--standalone", str(script), "--some_flag", "a b"], cwd=REPO,
                          env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("COMMAND "))
    assert line.endswith("-m torch.distributed.run --nproc_per_node=1 --standalone "
                         f"{script} --some_flag 'a b'"), line


def test_models_lists_the_registry(tmp_path):
    table = cli("models", tmp_path=tmp_path)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]
            if line and not line.startswith(("Also", " "))}
    assert sorted(rows) == known_model_ids()
    assert rows["black-forest-labs/FLUX.1-dev"][1:] == ["text-to-image", "flux", "1024x1024",
                                                        "28", "-", "-", "bfloat16", "3.5"]
    assert rows["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"][3:7] == ["480x832", "50", "81", "15"]
    assert "  THUDM/CogVideoX-2b -> zai-org/CogVideoX-2b" in table.stdout.splitlines()
    videos = cli("models", "--task", "text-to-video", "--json", tmp_path=tmp_path)
    listed = json.loads(videos.stdout)
    assert [m["model_id"] for m in listed] == [
        name for name, spec in MODELS.items()
        if name == spec.model_id and spec.task == "text-to-video"]
    assert all(m["num_frames"] and m["fps"] for m in listed)


def test_run_is_the_benchmark(tmp_path):
    """`run` hands its arguments to the benchmark: bad input is refused by it, in one line,
    before any model loads; `run --help` is the benchmark's help under the command's name."""
    proc = cli("run", "workload:t2i", "--workload.weights", "tiny", "--workload.batch_size", "0",
               "--workload.base_dir", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --workload.batch_size must be at least 1, got 0"]
    assert not (tmp_path / "out").exists()
    helped = cli("run", "--help", tmp_path=tmp_path, COLUMNS="120")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: mlenergy-diffusion run [-h] [OPTIONS]")
    assert "--warmup_iters" in helped.stdout and "--verbose" in helped.stdout


def test_every_tool_answers_under_its_subcommand(tmp_path):
    report = cli("report", str(tmp_path), tmp_path=tmp_path)
    assert report.returncode == 2 and "no results.json under" in report.stderr
    quality = cli("quality", str(tmp_path / "a"), str(tmp_path / "b"), tmp_path=tmp_path)
    assert quality.returncode == 2 and quality.stderr.startswith("error: ")
    check = cli("check", str(tmp_path), tmp_path=tmp_path)
    assert check.returncode == 1
    assert f"FAIL {tmp_path}: results.json is missing" in check.stderr
    nothing = cli("check", tmp_path=tmp_path)
    assert nothing.returncode == 2 and "name at least one run directory" in nothing.stderr
    sweep = cli("sweep", "--help", tmp_path=tmp_path)
    assert sweep.returncode == 0 and "--batch_sizes" in sweep.stdout


def test_help_text_is_one_paragraph_per_flag_with_the_real_default(tmp_path):
    """tyro shows each flag's docstring re-wrapped to the terminal (no line cut short where the
    source line ended), and a default the plan decides as the docstring says it, not as
    `(default: None)`."""
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark", "--help"],
                          cwd=REPO, env=offline_env(tmp_path, COLUMNS="100"),
                          capture_output=True, text=True, check=True)
    blocks: dict[str, list[str]] = {}
    flag = None
    for line in proc.stdout.splitlines():
        text = line.strip("│ ")
        if text.startswith("--"):
            flag = text.split()[0].rstrip(",")
            blocks[flag] = []
        elif not line.startswith("│"):
            flag = None  # the options box ended
        elif flag is not None:
            blocks[flag].append(text)
    assert "--warmup_iters" in blocks and "--verbose" in blocks
    for flag, lines in blocks.items():
        assert all(len(line) >= 60 for line in lines[:-1]), (flag, lines)
    joined = {flag: " ".join(lines) for flag, lines in blocks.items()}
    assert joined["--warmup_iters"].endswith("(default: 1; 2 with --use_torch_compile)")
    assert "flash (flash-attn 2), flash_3 (flash-attn 3)." in joined["--attention_backend"]
    assert joined["--compile_scope"].endswith("(default: transformer)")
    assert not [flag for flag, text in joined.items() if "(default: None)" in text
                and "Default:" in text]


# The original README's launch commands (commit 4af35c3, the README's first version), verbatim.
ORIGINAL_README_COMMANDS = [
    "python -m mlenergy.diffusion.benchmark workload:text-to-image --workload.weights tiny "
    "--workload.batch_size 2 --workload.height 256 --workload.width 256 "
    "--workload.inference_steps 4",
    """torchrun --nproc_per_node=1 mlenergy/diffusion/benchmark.py workload:text-to-image \\
  --workload.model_id black-forest-labs/FLUX.1-dev --workload.weights random""",
    """torchrun --nproc_per_node=4 mlenergy/diffusion/benchmark.py --ulysses_degree 4 \\
  --use_torch_compile --warmup_iters 2 workload:text-to-image --workload.weights random""",
    """torchrun --nproc_per_node=2 mlenergy/diffusion/benchmark.py --ring_degree 2 \\
  workload:t2i --workload.model_id stabilityai/stable-diffusion-3.5-large --workload.batch_size 4""",
    """torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK \\
  --rdzv_backend=c10d --rdzv_endpoint=$HEAD_NODE_IP:29500 --rdzv_id=flux-u8r2 \\
  mlenergy/diffusion/benchmark.py --ulysses_degree 8 --ring_degree 2 \\
  workload:text-to-image --workload.weights random --workload.base_dir /shared/run""",
]


def _launch(command: str):
    """(benchmark arguments, processes) of a README command, read by torchrun's own parser."""
    from torch.distributed.run import get_args_parser

    # As the shell reads it: backslash-newline continues the line; two variables filled in.
    command = command.replace("\\\n", " ").replace("$NODE_RANK", "0")
    argv = shlex.split(command.replace("$HEAD_NODE_IP", "10.0.0.1"))
    if argv[:3] == ["python", "-m", "mlenergy.diffusion.benchmark"]:
        assert importlib.util.find_spec(argv[2]) is not None
        return argv[3:], 1
    assert argv[0] == "torchrun"
    launch = get_args_parser().parse_args(argv[1:])
    assert (REPO / launch.training_script).resolve() == ENTRY and ENTRY.is_file()
    max_nodes = int(launch.nnodes.split(":")[-1])  # "N" or a range "MIN:MAX"
    return launch.training_script_args, max_nodes * int(launch.nproc_per_node)


@pytest.mark.parametrize("command", ORIGINAL_README_COMMANDS)
def test_the_original_readme_commands_still_parse(command):
    args, processes = _launch(command)
    config = parse_cli(args)
    assert type(config.workload) is TextToImage
    assert config.ulysses_degree * config.ring_degree == processes


def test_the_original_readme_commands_mean_what_they_meant():
    configs = [parse_cli(_launch(c)[0]) for c in ORIGINAL_README_COMMANDS]
    quick, one, compiled, ring, nodes = configs
    assert (quick.workload.weights, quick.workload.batch_size, quick.workload.height,
            quick.workload.inference_steps) == ("tiny", 2, 256, 4)
    assert (one.workload.model_id, one.workload.weights) == ("black-forest-labs/FLUX.1-dev",
                                                             "random")
    assert compiled.use_torch_compile and compiled.warmup_iters == 2
    assert ring.workload.model_id == "stabilityai/stable-diffusion-3.5-large"
    assert ring.workload.batch_size == 4 and ring.ring_degree == 2
    assert nodes.workload.base_dir == Path("/shared/run")


def test_the_readme_documents_every_command_and_flag_of_the_tools():
    from mlenergy.diffusion.cli import COMMANDS, ModelsArgs
    from mlenergy.diffusion.results.quality import QualityArgs
    from mlenergy.diffusion.tools.check_runs import CheckArgs

    readme = (REPO / "README.md").read_text()
    missing = [f"mlenergy-diffusion {name}" for name in COMMANDS
               if f"mlenergy-diffusion {name}" not in readme]
    missing += [] if "mlenergy-diffusion --version" in readme else ["--version"]
    for args in (CheckArgs, ModelsArgs, QualityArgs):
        missing += [f"--{f.name}" for f in dataclasses.fields(args)
                    if "Positional" not in str(f.type) and f"`--{f.name}" not in readme]
    assert not missing, f"README.md does not document {missing}"
