"""A real one-node Slurm cluster on this machine, for the tests (and by hand, see the README).

Debian's `slurm-wlm` and `munge`, installed with apt-get when missing (needs root, as in CI),
daemons started without systemd, every file of theirs in one directory: a munge key and socket
of its own, slurmctld and slurmd on free ports, `ProctrackType=proctrack/linuxproc` and no
cgroups, and a GPU GRES whose devices are character-device stand-ins (`mknod PATH c 1 3`), since
Slurm refuses plain files there. Nothing outside the directory is touched, so it can run beside
another such cluster or a real Slurm client configuration.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMON_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def ensure_installed() -> None:
    if all(shutil.which(b, path=DAEMON_PATH) for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise RuntimeError("Slurm is not installed and installing it needs root: "
                           "apt-get install slurm-wlm munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env, timeout=600,
                   capture_output=True)
    subprocess.run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends",
                    "slurm-wlm", "munge"], check=True, env=env, timeout=900,
                   capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class Cluster:
    def __init__(self, root: Path, gpus: int = 2):
        self.root = Path(root)
        self.gpus = gpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

    def _path(self, name: str) -> Path:
        return self.root / name

    def _write_config(self) -> None:
        for d in ("munge", "state", "spool", "log", "dev"):
            self._path(d).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            device = self._path(f"dev/gpu{i}")
            if not device.exists():
                # A character device (that of /dev/null): Slurm refuses plain files as GPUs.
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))
        key = self._path("munge/munge.key")
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=mlenergytest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "GresTypes=gpu",
            "MpiDefault=none", "ReturnToService=2", "KillWait=5", "MinJobAge=3600",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill", "SchedulerParameters=bf_interval=1",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
            f"RealMemory={_memory_mb() // 2} Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            ""]))
        (self.root / "gres.conf").write_text(
            f"Name=gpu File={r}/dev/gpu[0-{self.gpus - 1}]\n")

    def start(self, timeout_s: float = 60) -> None:
        self.root.chmod(0o755)
        self._write_config()
        m = self._path("munge")
        self.run("munged", "--force", f"--key-file={m}/munge.key", f"--socket={m}/munge.socket",
                 f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                 f"--seed-file={m}/munged.seed")
        self.run("slurmctld", "-f", str(self.conf))
        self.run("slurmd", "-f", str(self.conf))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test Slurm node did not become idle (state {state!r}):\n"
                           + self.logs())

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env)
        return subprocess.run(list(cmd), check=check, capture_output=True, text=True,
                              timeout=120, **kwargs)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
                         for p in sorted(self._path("log").glob("*.log")))

    def jobs_in_queue(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()

    def wait(self, timeout_s: float) -> None:
        """Until no job is pending or running."""
        deadline = time.monotonic() + timeout_s
        while self.jobs_in_queue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout_s:g} s: "
                                   f"{self.run('squeue', check=False).stdout}")
            time.sleep(1)

    def task_states(self, job_id: str) -> dict[int, tuple[str, str]]:
        """Array task id -> (JobState, ExitCode) of a finished or running array job."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            states[int(fields["ArrayTaskId"])] = (fields["JobState"], fields["ExitCode"])
        return states

    def _our_processes(self) -> list[int]:
        """Processes that carry this cluster's SLURM_CONF: its daemons' children and its jobs."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    environ = Path(f"/proc/{entry}/environ").read_bytes()
                except OSError:
                    continue
                if marker in environ.split(b"\0"):
                    pids.append(int(entry))
        return pids

    def _pid(self, name: str) -> int | None:
        try:
            return int(self._path(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Cancel every job, then end the daemons and whatever they left."""
        if self.jobs_in_queue():
            self.run("scancel", "--full", *self.jobs_in_queue(), check=False)
            try:
                self.wait(30)
            except TimeoutError:
                pass
        pids = [p for p in (self._pid("slurmd.pid"), self._pid("slurmctld.pid"),
                            self._pid("munge/munged.pid")) if p]
        pids += self._our_processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
                time.sleep(0.2)
