"""What a person reads during a real tiny run: the result on stdout, progress and logs on
stderr, no third-party chatter, no bar redraws in files, the bar and log lines taking turns on a
terminal; and the installed command under torchrun."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import stat
import struct
import subprocess
import sys
import termios
import threading
import tomllib
from pathlib import Path

from conftest import REPO, load_results, offline_env, only_run_dir, run_benchmark

TINY = ["workload:t2i", "--workload.weights", "tiny", "--workload.height", "128",
        "--workload.width", "128", "--workload.inference_steps", "2"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \[rank 0\] ")
# Lines xDiT logs at DEBUG, INFO or as routine WARNINGs on every tiny run.
XDIT_CHATTER = ("distributed_init_method=env://", "Pipeline patch number not set",
                "Transformer backbone found", "Scheduler found", "Using SDPA as attention backend",
                "Model parallel is not initialized")


def test_the_result_goes_to_stdout_and_the_logs_to_stderr(tmp_path):
    base = tmp_path / "out"
    # Compiled (with the quick eager backend) to see the warm-up announce the compilation.
    # The per-step line would show at once (no delay) where stderr is a terminal; it is not.
    proc = run_benchmark([*TINY, "--benchmark_iters", "1", "--workload.base_dir", str(base),
                          "--use_torch_compile", "--compile_backend", "eager"], tmp_path,
                         MLENERGY_STEP_PROGRESS_DELAY_S="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(base)
    out = proc.stdout.splitlines()
    assert out[0] == "Summary" and out[1].split() == [
        "model", "black-forest-labs/FLUX.1-dev", "(tiny", "weights,", "float32)"]
    assert any(line.split()[:3] == ["energy", "/", "image"] for line in out)
    assert not any(LOG_LINE.match(line) for line in out)
    err = proc.stderr.splitlines()
    assert "Summary" not in proc.stderr
    assert all(LOG_LINE.match(line) for line in err), [l for l in err if not LOG_LINE.match(l)]
    messages = [LOG_LINE.sub("", line) for line in err]
    loading = messages.index("Loading black-forest-labs/FLUX.1-dev (tiny weights) ...")
    compiling = messages.index("Compiling the denoiser (first call; can take minutes) ...")
    ready = next(i for i, m in enumerate(messages) if m.startswith("Pipeline ready"))
    warmed = next(i for i, m in enumerate(messages) if m.startswith("Warm-up: 2 iteration(s)"))
    assert loading < ready < compiling < warmed
    assert re.fullmatch(r"Pipeline ready in \d+\.\d s: denoiser of \d+\.\d K parameters, "
                        r"\d+\.\d kB of weights", messages[ready]), messages[ready]
    # No bar without a terminal: nothing redrawn with carriage returns, in either stream, and
    # no per-step line.
    assert "\r" not in proc.stdout + proc.stderr
    assert "step/s" not in proc.stderr and "s/step" not in proc.stderr
    assert not re.search(r"(warm-up|iteration) 1/\d", proc.stderr)
    assert not [c for c in XDIT_CHATTER if c in proc.stdout + proc.stderr]
    log = (run_dir / "driver_log.txt").read_text()
    assert "Summary" in log and "Loading black-forest-labs/FLUX.1-dev" in log
    # The run's facts in words: no dict, list or None/True/False of a Python repr; the plan one
    # short line on the console, in full (every setting) in the driver log only.
    for name in ("Plan", "Environment", "Provenance"):
        line = next(m for m in messages if m.startswith(f"{name}: "))
        assert not re.search(r"[{\[]'|': |\b(None|True|False)\b", line), line
    plan = next(m for m in messages if m.startswith("Plan: "))
    assert len(plan) < 300 and "options: torch compile, compile backend eager" in plan, plan
    assert "Plan in full:" in log and "Plan in full" not in proc.stderr
    assert "  --workload.inference_steps: 2\n" in log and "  option: compile backend: eager" in log
    provenance = _provenance(log)
    assert provenance["command_line"].endswith(
        "-m mlenergy.diffusion.benchmark " + " ".join(TINY) + " --benchmark_iters 1 "
        f"--workload.base_dir {base} --use_torch_compile --compile_backend eager")
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["git_commit"])
    doc = load_results(run_dir)
    assert doc["num_iterations"] == 1
    # What the first compiled call cost beyond a steady one, named as such, beside the
    # compiler's own count of its compile time.
    first, second = doc["warmup_iteration_times"]
    assert doc["compile"]["first_call_overhead_s"] == first - second
    compile_row = next(line for line in out if line.split()[:1] == ["compile"])
    assert re.fullmatch(rf" +compile +\d+\.\d s compiling \(dynamo\); first call {first:.1f} s, "
                        rf"{first - second:.1f} s over a steady one", compile_row), compile_row


def _provenance(log: str) -> dict:
    """The driver log's Provenance line, in words: version, commit, and the command last."""
    found = re.search(r"Provenance: mlenergy-diffusion (\S+), (?:git ([0-9a-f]{40})"
                      r"( \(uncommitted changes\))?|not a git checkout); command: (.*)\n", log)
    assert found, log
    version, commit, dirty, command = found.groups()
    return {"benchmark_version": version, "git_commit": commit, "git_dirty": bool(dirty),
            "command_line": command}


def _run_on_a_terminal(args: list[str], tmp_path: Path, **env: str) -> tuple[int, str, str]:
    """Run the benchmark with stderr on a pseudo-terminal; (exit status, stdout, terminal)."""
    leader, follower = pty.openpty()
    # 24 rows of 100 columns: a new pseudo-terminal has no size, and tqdm draws no bar in 0.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mlenergy.diffusion.benchmark", *args],
                            cwd=REPO, env=offline_env(tmp_path, **env), stdout=subprocess.PIPE,
                            stderr=follower, text=True)
    os.close(follower)
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's last writer closed it
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(leader)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_the_bar_and_the_log_lines_take_turns(tmp_path):
    """With --verbose, xDiT's own lines show too, on stderr (it prints them on stdout). The
    per-step line of each iteration shows too: here at once (a real run waits a few seconds
    into an iteration before drawing it)."""
    code, stdout, terminal = _run_on_a_terminal(
        [*TINY, "--benchmark_iters", "3", "--workload.base_dir", str(tmp_path / "out"),
         "--verbose"], tmp_path, MLENERGY_STEP_PROGRESS_DELAY_S="0")
    assert code == 0, terminal[-3000:]
    assert stdout.startswith("Summary\n") and "\r" not in stdout
    assert "iterations:" in terminal  # the bar was drawn
    for label in ("warm-up 1/1", "iteration 1/3", "iteration 3/3"):
        assert re.search(rf"{label}: +\d+%\|[^\r\n]*\| \d/2 \[", terminal), label
    # A terminal ends lines with \r\n; a bar redraw starts with \r. Every iteration's log line
    # must start on a cleared line, never after a bar fragment.
    lines = [line.rstrip("\r") for line in terminal.split("\n")]
    iteration_lines = [line for line in lines if "] iteration " in line]
    assert len(iteration_lines) == 3
    for line in iteration_lines:
        assert LOG_LINE.match(line.split("\r")[-1]), repr(line)
    # Nor does any other line (diffusers' own, with --verbose) follow a bar on its line.
    bar_then_text = re.compile(r"(it/s|s/it|step/s|s/step)\][^\r\x1b]")
    assert not [line for line in lines if bar_then_text.search(line)]
    assert "Pipeline patch number not set" in terminal
    assert not [c for c in XDIT_CHATTER if c in stdout]


def _console_script(bin_dir: Path) -> Path:
    """What pip writes for pyproject's [project.scripts] entry (the shared editable install
    here points at another checkout, so it is written by hand, from the same entry)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["mlenergy-diffusion"].split(":")
    path = bin_dir / "mlenergy-diffusion"
    bin_dir.mkdir()
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                    f"if __name__ == '__main__':\n    sys.exit({function}())\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_installed_command_runs_under_torchrun(tmp_path):
    bin_dir = tmp_path / "bin"
    _console_script(bin_dir)
    env = offline_env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                      PYTHONPATH=str(REPO))
    base = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=1", "--no-python", "mlenergy-diffusion", "run",
                           *TINY, "--benchmark_iters", "1", "--workload.base_dir", str(base)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("Summary\n")
    log = (only_run_dir(base) / "driver_log.txt").read_text()
    provenance = _provenance(log)
    assert "-m torch.distributed.run --standalone --nproc_per_node=1 --no-python " \
           "mlenergy-diffusion run workload:t2i" in provenance["command_line"]
    assert json.loads((only_run_dir(base) / "results.json").read_text())["num_processes"] == 1
