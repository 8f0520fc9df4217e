"""A one-node SLURM cluster on localhost for the tests: Debian's slurm-wlm and munge, installed
here when they are missing and we are root, slurmctld + slurmd started in the foreground as
children of the test (2 CPUs), torn down by pid afterwards.

    with local_cluster(tmp_dir) as env:   # env: os.environ + SLURM_CONF
        subprocess.run(["sbatch", ...], env=env)

Every step that can fail raises `Unavailable` with the reason, and the test skips with it: a
cluster that cannot start is never replaced by a mock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "srun", "munged", "munge")
PORTS = (16817, 16818)  # slurmctld, slurmd: away from the defaults of a real cluster


class Unavailable(Exception):
    """Why no cluster could be started here."""


def _missing() -> list[str]:
    return [b for b in BINARIES
            if not (shutil.which(b) or Path("/usr/sbin", b).exists())]


def install() -> None:
    """apt-get install slurm-wlm munge, where they are missing (as root, bounded in time)."""
    if not _missing():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(_missing())} not installed and not root with apt-get "
                          "(apt-get install slurm-wlm munge)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(cmd)} took over 15 minutes") from None
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise Unavailable(f"{' '.join(cmd)} failed: {tail[0]}")
    if _missing():
        raise Unavailable(f"still missing after apt-get: {', '.join(_missing())}")


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _munge_works(env) -> bool:
    try:
        token = subprocess.run(["munge", "-n"], env=env, capture_output=True, timeout=10)
        back = subprocess.run(["unmunge"], input=token.stdout, env=env, capture_output=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return token.returncode == 0 and back.returncode == 0


def write_conf(directory: Path, cpus: int = 2) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    conf = directory / "slurm.conf"
    conf.write_text(f"""\
ClusterName=probetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={PORTS[0]}
SlurmdPort={PORTS[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/log/slurmctld.log
SlurmdLogFile={directory}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=30
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


@contextlib.contextmanager
def local_cluster(directory: Path, cpus: int = 2, timeout: float = 60) -> Iterator[dict]:
    install()
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root to start jobs")
    directory.mkdir(parents=True, exist_ok=True)
    conf = write_conf(directory, cpus)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    try:
        if not _munge_works(env):
            key = Path("/etc/munge/munge.key")
            if not key.is_file():
                raise Unavailable("no /etc/munge/munge.key (mungekey --create)")
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            log = open(directory / "log" / "munged.log", "w")
            started.append(subprocess.Popen([_sbin("munged"), "--foreground", "--force"],
                                            stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 20
            while not _munge_works(env):
                if time.monotonic() > deadline or started[-1].poll() is not None:
                    raise Unavailable("munged did not start: "
                                      + (directory / "log" / "munged.log").read_text()[-300:])
                time.sleep(0.3)
        for daemon in ("slurmctld", "slurmd"):
            log = open(directory / "log" / f"{daemon}.out", "w")
            cmd = [_sbin(daemon), "-D", "-f", str(conf)] + (["-c"] if daemon != "slurmd"
                                                           else [])
            started.append(subprocess.Popen(cmd, env=env, stdout=log,
                                            stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while True:
            info = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                  text=True, timeout=20)
            if info.returncode == 0 and info.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            dead = [p for p in started if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = " | ".join((directory / "log" / f).read_text()[-300:]
                                  for f in ("slurmctld.out", "slurmd.out")
                                  if (directory / "log" / f).exists())
                state = info.stdout.strip() or info.stderr.strip()
                raise Unavailable(f"the cluster did not come up ({state}): {logs}")
            time.sleep(0.5)
        yield env
    finally:
        for proc in reversed(started):  # the daemons we started, by pid
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
