"""`probe sweep FILE.toml`: a grid of `train-split` runs and their probes, on the engines
researchers already run: a process pool on this machine, SLURM through submitit, torchrun for
several GPUs per run, or printed commands for any other scheduler.

    [grid]            # keys: train-split option names (dashes or underscores); values: lists
    dataset = ["celeba"]
    n = [10, 1000, 10000]
    split = ["a", "b"]
    window = ["", "an-default"]     # "" : no window; a list value: several --window options
    [fixed]           # single values for every job
    steps = 400000
    [[exclude]]       # optional rows removed from the grid (every key given must match)
    n = 10
    window = "an-default"
    [probes]          # optional: commands run on each finished run, as in experiment files
    run = [["generalization", "@run"], ["attention-locality", "@run"]]
    [slurm]           # optional executor settings (the command line wins)
    partition = "gpu"

Each grid point is one job, keyed by the deterministic run id of the run it trains
(`probe.train.run_id`, planned without preparing any data). A job is the run's `train-split`
followed by its probes, and every part of it is resumable, so a job whose run and probes are
finished is skipped, a killed one resumes from its last checkpoint, and rerunning a sweep is
always safe. The run locks (`probe.locks`) keep two workers from ever training one run.

Under the artifacts root, sweeps/<name>/jobs/<run-id>.json records each job's state (pid, host,
SLURM job id, exit, last error line) and sweeps/<name>/logs/<run-id>.log its output;
`probe sweep status` reads them beside the runs themselves.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from probe import artifacts
from probe.artifacts import Artifacts
from probe.errors import ProbeError
from probe.experiments import read_toml

SECTIONS = ("name", "description", "grid", "fixed", "exclude", "probes", "slurm")
NOT_SWEEPABLE = ("resume", "dry_run", "help")  # train-split options a job may not set
SLURM_KEYS = ("partition", "account", "time", "mem", "gpus_per_job", "threads_per_job",
              "array_parallelism", "max_requeues", "constraint", "qos", "additional")
EXECUTORS = ("local", "slurm", "print")
HOST = socket.gethostname()
SWEEPS = "sweeps"


@dataclass(frozen=True)
class Job:
    """One grid point: the train-split arguments of exactly one run, and that run's id."""

    run_id: str
    args: tuple[str, ...]
    point: tuple[tuple[str, object], ...]  # the grid values, for tables


@dataclass
class Sweep:
    path: Path
    name: str
    jobs: list[Job]
    probes: list[list[str]] = field(default_factory=list)
    slurm: dict = field(default_factory=dict)

    def job(self, run_id: str) -> Job:
        for job in self.jobs:
            if job.run_id == run_id:
                return job
        raise ProbeError(f"{self.path}: no job {run_id!r} (probe sweep status lists them)")


# ----------------------------------------------------------------------------- the file


def _norm(key: str) -> str:
    return str(key).strip().replace("-", "_")


def train_options() -> dict:
    """train-split's options by every name a sweep file may give them (`n`, `window`,
    `keep_checkpoints`, ...): {name: click.Option}."""
    import click

    from probe.cli.train import train_split

    out = {}
    for param in train_split.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                out[_norm(opt.lstrip("-"))] = param
    return out


def _arguments(key: str, value, option, where: str) -> list[str]:
    """One option's value as train-split arguments."""
    flag = max(option.opts, key=len)
    if option.is_flag:
        if not isinstance(value, bool):
            raise ProbeError(f"{where}: {key} is a flag: true or false, got {value!r}")
        return [flag] if value else []
    if isinstance(value, dict) or isinstance(value, bool):
        raise ProbeError(f"{where}: {key} = {value!r} is not a value of {flag}")
    if key == "n" and not isinstance(value, int):
        raise ProbeError(f"{where}: n takes whole numbers, got {value!r}")
    if key == "split" and value not in ("a", "b"):
        raise ProbeError(f"{where}: split is a or b for one job, got {value!r} (a grid of both: "
                         'split = ["a", "b"])')
    if isinstance(value, list):
        if not option.multiple or key == "n":
            raise ProbeError(f"{where}: {key} takes one value per job, got a list {value!r}")
        return [a for v in value for a in _arguments(key, v, option, where)]
    if option.multiple and value == "":
        return []  # window = "": no window
    return [flag, str(value)]


def _matches(row: dict, point: dict) -> bool:
    return all(point.get(k) == v for k, v in row.items())


def load(path: str | Path, store: Artifacts, plan: bool = True) -> Sweep:
    """Read and expand a sweep file: every job with its run id (planned like
    `train-split --dry-run`: nothing prepared, nothing written). Bad input is one line."""
    path = Path(path)
    doc = read_toml(path, "sweep")
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ProbeError(f"{path}: unknown section {unknown[0]!r} (a sweep file has "
                         f"{', '.join(SECTIONS)})")
    options = train_options()
    grid_doc, fixed_doc = doc.get("grid", {}), doc.get("fixed", {})
    for name, table in (("grid", grid_doc), ("fixed", fixed_doc)):
        if not isinstance(table, dict):
            raise ProbeError(f"{path}: [{name}] must be a table")
    grid, fixed = {}, {}
    for table, out, section in ((grid_doc, grid, "grid"), (fixed_doc, fixed, "fixed")):
        for key, value in table.items():
            norm = _norm(key)
            if norm not in options or norm in NOT_SWEEPABLE:
                raise ProbeError(f"{path}: [{section}] {key} is not a train-split option "
                                 "(`probe train-split --help` lists them)")
            if norm in grid or norm in fixed:
                raise ProbeError(f"{path}: {key} is given twice")
            out[norm] = value
    if not grid or any(isinstance(v, list) and not v for v in grid.values()):
        raise ProbeError(f"{path}: the grid is empty: [grid] needs at least one option with a "
                         'non-empty list of values (n = [10, 1000])')
    for key, value in grid.items():
        if not isinstance(value, list):
            raise ProbeError(f"{path}: [grid] {key} must be a list of values (a single value "
                             "goes in [fixed])")
    if "n" not in grid and "n" not in fixed:
        raise ProbeError(f"{path}: no n: give n in [grid] or [fixed]")

    excludes = doc.get("exclude", [])
    if not isinstance(excludes, list) or not all(isinstance(r, dict) for r in excludes):
        raise ProbeError(f"{path}: [[exclude]] rows must be tables")
    excludes = [{_norm(k): v for k, v in row.items()} for row in excludes]
    for row in excludes:
        bad = sorted(set(row) - set(grid))
        if bad or not row:
            raise ProbeError(f"{path}: [[exclude]] {bad[0] if bad else 'an empty row'}: "
                             "an exclude row names grid keys only")

    probes = _probes(doc.get("probes", {}), path)
    slurm = doc.get("slurm", {})
    if not isinstance(slurm, dict):
        raise ProbeError(f"{path}: [slurm] must be a table")
    bad = sorted(set(map(_norm, slurm)) - set(SLURM_KEYS))
    if bad:
        raise ProbeError(f"{path}: [slurm] {bad[0]}: not a setting (has "
                         f"{', '.join(SLURM_KEYS)})")

    fixed_args = [a for k, v in fixed.items()
                  for a in _arguments(k, v, options[k], f"{path}: [fixed]")]
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    points = [p for p in points if not any(_matches(r, p) for r in excludes)]
    if not points:
        raise ProbeError(f"{path}: [[exclude]] removes every job of the grid")
    jobs, seen = [], set()
    for point in points:
        args = [a for k, v in point.items()
                for a in _arguments(k, v, options[k], f"{path}: [grid]")] + fixed_args
        run_id = plan_run_id(store, args, f"{path}: job {_describe(point)}") if plan else "-"
        if run_id in seen and plan:
            continue  # two grid points that name one run (window "" and "0-11:global")
        seen.add(run_id)
        jobs.append(Job(run_id, tuple(args), tuple(point.items())))
    return Sweep(path, str(doc.get("name", path.stem)), jobs, probes,
                 {_norm(k): v for k, v in slurm.items()})


def _describe(point: dict) -> str:
    return " ".join(f"{k}={v!r}" if v == "" else f"{k}={v}" for k, v in point.items())


def _probes(table, path: Path) -> list[list[str]]:
    from probe.cli import cli

    if not isinstance(table, dict) or set(table) - {"run"}:
        raise ProbeError(f"{path}: [probes] holds run = [[command, args...], ...]")
    commands = table.get("run", [])
    if not isinstance(commands, list) or not all(
            isinstance(c, list) and c and all(isinstance(a, str | int | float) for a in c)
            for c in commands):
        raise ProbeError(f"{path}: [probes] run must be a list of commands, each a list "
                         '(["generalization", "@run"])')
    out = []
    for command in commands:
        command = [str(a) for a in command]
        if command[0] not in cli.commands or command[0] in ("train-split", "sweep"):
            raise ProbeError(f"{path}: [probes] {command[0]!r} is not a probe command")
        if any(a == "--artifacts" or a.startswith("--artifacts=") for a in command):
            raise ProbeError(f"{path}: [probes] {command[0]}: a probe may not set --artifacts "
                             "(it writes under the sweep's root)")
        out.append(command)
    return out


def plan_run_id(store: Artifacts, args: list[str], where: str) -> str:
    """The run id `probe train-split ARGS` would train (ARGS naming one run)."""
    import click

    from probe.cli.train import planned_configs
    from probe.train import run_id

    try:
        configs = planned_configs(store, args)
    except click.ClickException as exc:
        raise ProbeError(f"{where}: {exc.format_message()}") from None
    except ProbeError as exc:
        raise ProbeError(f"{where}: {exc}") from None
    if len(configs) != 1:
        raise ProbeError(f"{where}: names {len(configs)} runs, a job trains one")
    return run_id(configs[0])


# ---------------------------------------------------------------------------- job state


def sweep_dir(store: Artifacts, sweep: Sweep) -> Path:
    return store.root / SWEEPS / sweep.name


def state_path(store: Artifacts, sweep: Sweep, run_id: str) -> Path:
    return sweep_dir(store, sweep) / "jobs" / f"{run_id}.json"


def log_path(store: Artifacts, sweep: Sweep, run_id: str) -> Path:
    return sweep_dir(store, sweep) / "logs" / f"{run_id}.log"


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(store, sweep, run_id, **state) -> None:
    path = state_path(store, sweep, run_id)
    artifacts.write_json(path, {**_read_state(path), **state, "updated": time.time()})


def _alive(pid, host) -> bool | None:
    """Whether the process is alive; None when it is on another host (unknowable here)."""
    if host != HOST:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _training_holder(store: Artifacts, run_id: str) -> str | None:
    """"pid N on HOST" of the live process training `run_id`, or None (the lock file holds
    its holder; a file left by a dead process is stale)."""
    path = store.lock("run", run_id)
    try:
        pid, host = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if _alive(pid, host) is False else f"pid {pid} on {host}"


def _run_total(run_dir: Path) -> int | None:
    from probe.config import run_config_from_dict

    try:
        return run_config_from_dict(artifacts.read_json(run_dir / artifacts.RUN_CONFIG)
                                    ).train.total_steps
    except (ProbeError, OSError, ValueError, KeyError, TypeError):
        return None


def _last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / artifacts.RUN_STATS).read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def _trained(run_dir: Path) -> bool:
    from probe.train import _finished

    total = _run_total(run_dir)
    return total is not None and _finished(run_dir, total)


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0]:
            return line.strip()
    return ""


def job_status(store: Artifacts, sweep: Sweep, job: Job) -> dict:
    """state (pending / running / done / failed), progress, where, log and last error line."""
    run_dir = store.run_dir(job.run_id)
    state = _read_state(state_path(store, sweep, job.run_id))
    log = Path(state["log"]) if state.get("log") else log_path(store, sweep, job.run_id)
    total = _run_total(run_dir)
    step = _last_step(run_dir)
    row = {"job": job.run_id, "state": "pending", "step": step, "steps": total,
           "where": "", "log": str(log) if log.exists() else "", "error": ""}
    trained = _trained(run_dir)
    holder = _training_holder(store, job.run_id)
    live = _alive(state.get("pid"), state.get("host")) if state.get("state") == "running" \
        else False
    if trained and (not sweep.probes or state.get("state") == "done"):
        row["state"] = "done"
    elif holder or live or (live is None and state.get("state") == "running"):
        row["state"] = "running"
        row["where"] = holder or f"pid {state.get('pid')} on {state.get('host')}"
    elif state.get("state") == "failed":
        row["state"] = "failed"
        row["error"] = state.get("error") or _last_error(log)
    elif state.get("state") == "queued":
        row["state"] = "pending"
        row["where"] = "queued"
    if state.get("slurm_job"):
        row["where"] = (row["where"] + " " if row["where"] else "") + f"slurm {state['slurm_job']}"
    if row["state"] == "pending" and trained and sweep.probes:
        row["where"] = (row["where"] + " " if row["where"] else "") + "(probes left)"
    return row


def status_table(store: Artifacts, sweep: Sweep) -> list[dict]:
    return [job_status(store, sweep, job) for job in sweep.jobs]


def format_status(rows: list[dict]) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "pending",
                                                            "failed")}
    width = max(len(r["job"]) for r in rows)
    lines = [f"{'job':{width}s}  {'state':8s} {'step':>15s}  where / log / last error"]
    for r in rows:
        step = f"{r['step']}/{r['steps']}" if r["steps"] else "-"
        extra = [r["where"]] if r["where"] else []
        if r["state"] == "failed":
            extra += [r["log"], r["error"]]
        lines.append(f"{r['job']:{width}s}  {r['state']:8s} {step:>15s}  "
                     + "  ".join(e for e in extra if e))
    lines.append(f"{len(rows)} jobs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ one job


def _probe_args(command: list[str], run_dir: Path) -> list[str]:
    return [str(run_dir) if a == "@run" else a for a in command]


def torchrun_command(gpus: int, job: Job) -> list[str]:
    """The job's training under torchrun, one rank per GPU. The artifacts root goes in
    PROBE_ARTIFACTS, and `--` ends torchrun's options: its parser would otherwise refuse
    `--n` as an abbreviation of its own `--nnodes` / `--nproc-per-node`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(gpus), "-m", "probe", "--", "train-split", *job.args]


def run_job(store: Artifacts, sweep: Sweep, run_id: str, gpus: int = 0, threads: int = 0,
            echo=print) -> Path:
    """Train one job's run (resuming it) and run its probes; records the job's state."""
    from probe.experiments import run_command

    job = sweep.job(run_id)
    holder = _training_holder(store, run_id)
    if holder:
        raise ProbeError(f"run {run_id} is being trained by {holder}")
    _write_state(store, sweep, run_id, state="running", pid=os.getpid(), host=HOST,
                 started=time.time(), slurm_job=_slurm_id(), error="")
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        if gpus > 1:  # DDP: one rank per GPU; the probes run here, once
            done = subprocess.run(torchrun_command(gpus, job), preexec_fn=_die_with_parent,
                                  env={**os.environ, artifacts.ENV_ROOT: str(store.root)})
            if done.returncode:
                raise ProbeError(f"torchrun exited with code {done.returncode}")
            run_dir = store.run_dir(run_id)
        else:
            (run_dir,) = run_command(["--artifacts", str(store.root), "train-split", *job.args])
        if Path(run_dir).name != run_id:
            raise ProbeError(f"trained {Path(run_dir).name}, planned {run_id}")
        if not _trained(Path(run_dir)):
            raise ProbeError(f"{run_id}: training ended without final weights")
        for command in sweep.probes:
            args = _probe_args(command, Path(run_dir))
            echo("$ probe " + " ".join(shlex.quote(a) for a in args))
            run_command(["--artifacts", str(store.root), *args])
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        _write_state(store, sweep, run_id, state="failed", error=f"error: {message}",
                     finished=time.time())
        raise
    except BaseException:  # killed, preempted (submitit requeues): resumable, not failed
        _write_state(store, sweep, run_id, state="interrupted", finished=time.time())
        raise
    _write_state(store, sweep, run_id, state="done", finished=time.time())
    return Path(run_dir)


def _slurm_id() -> str:
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"{job}_{task}"
    return os.environ.get("SLURM_JOB_ID", "")


def _die_with_parent() -> None:
    """In a child between fork and exec: die when the process that started it dies (a killed
    sweep leaves no orphan still training)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pending(store: Artifacts, sweep: Sweep) -> tuple[list[Job], list[dict]]:
    """The jobs left to run (not done, not running elsewhere), and every job's status."""
    rows = status_table(store, sweep)
    return [j for j, r in zip(sweep.jobs, rows) if r["state"] in ("pending", "failed")], rows


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_gpus(gpus: int, jobs: int) -> None:
    if not gpus:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        raise ProbeError(f"--gpus-per-job {gpus}: this machine has no GPU (a local sweep on "
                         "CPUs leaves it at 0; --executor slurm asks the cluster for them)")
    if gpus * jobs > have:
        raise ProbeError(f"--gpus-per-job {gpus} x --jobs {jobs} needs {gpus * jobs} GPUs; "
                         f"this machine has {have}")


# ------------------------------------------------------------------------------ executors


def job_command(store: Artifacts, sweep: Sweep, job: Job, threads: int, gpus: int) -> list[str]:
    return [sys.executable, "-m", "probe", "--artifacts", str(store.root), "sweep", "job",
            str(sweep.path), "--job", job.run_id, "--threads", str(threads),
            "--gpus", str(gpus)]


def thread_env(threads: int) -> dict[str, str]:
    """The thread budget of one job, set before torch starts in it."""
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS")}


def run_local(store: Artifacts, sweep: Sweep, jobs: int, threads: int, gpus: int = 0,
              echo=print, poll: float = 0.2) -> dict:
    """Every pending job, `jobs` at a time, each a process of its own with `threads` threads
    (and its own `gpus` GPUs); returns {run id: exit code} of the jobs it ran."""
    check_gpus(gpus, jobs)
    todo, rows = pending(store, sweep)
    skipped = sum(r["state"] == "done" for r in rows)
    busy = [r["job"] for r in rows if r["state"] == "running"]
    echo(f"sweep {sweep.name}: {len(sweep.jobs)} jobs, {skipped} done, {len(busy)} running "
         f"elsewhere, {len(todo)} to run ({jobs} at a time, {threads} threads each)")
    slots = list(range(jobs))
    running: dict = {}
    results: dict[str, int] = {}
    queue = list(todo)
    while queue or running:
        while queue and slots:
            job, slot = queue.pop(0), slots.pop(0)
            log = log_path(store, sweep, job.run_id)
            log.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **thread_env(threads)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * gpus + i) for i in range(gpus))
            with open(log, "ab") as out:
                out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {HOST}\n".encode())
                out.flush()
                proc = subprocess.Popen(job_command(store, sweep, job, threads, gpus),
                                        stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env,
                                        preexec_fn=_die_with_parent)
            running[proc] = (job, slot)
            echo(f"started {job.run_id} (pid {proc.pid}, log {log})")
        for proc in [p for p in running if p.poll() is not None]:
            job, slot = running.pop(proc)
            slots.append(slot)
            results[job.run_id] = proc.returncode
            line = "done" if proc.returncode == 0 else \
                f"failed ({_last_error(log_path(store, sweep, job.run_id)) or proc.returncode})"
            echo(f"{line}: {job.run_id}")
        time.sleep(poll)
    return results


def print_commands(store: Artifacts, sweep: Sweep, threads: int, gpus: int) -> list[str]:
    """One shell line per job not yet done: its training (under torchrun for several GPUs)
    and its probes, for any other scheduler."""
    todo, _ = pending(store, sweep)
    root = shlex.quote(str(store.root))
    lines = []
    for job in todo:
        if gpus > 1:
            train = (f"{artifacts.ENV_ROOT}={root} torchrun --standalone --nproc_per_node "
                     f"{gpus} -m probe -- train-split ")
        else:
            train = f"probe --artifacts {root} train-split "
        parts = [(f"OMP_NUM_THREADS={threads} " if threads else "") + train
                 + " ".join(shlex.quote(a) for a in job.args)]
        run_dir = store.run_dir(job.run_id)
        parts += [f"probe --artifacts {root} "
                  + " ".join(shlex.quote(a) for a in _probe_args(c, run_dir))
                  for c in sweep.probes]
        lines.append(" && ".join(parts))
    return lines


def _minutes(value) -> int:
    """SLURM's time formats (MM, HH:MM:SS, D-HH:MM:SS) or a number of minutes."""
    if isinstance(value, int | float) and value > 0:
        return math.ceil(value)
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ProbeError(f"--time {value!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if b is None:
        minutes = a * 60 if days is not None else a  # "D-HH" or "MM"
    elif c is None:
        minutes = a * 60 + b if days is not None else a + math.ceil(b / 60)  # D-HH:MM, MM:SS
    else:
        minutes = a * 60 + b + math.ceil(c / 60)
    minutes += (days or 0) * 24 * 60
    if minutes <= 0:
        raise ProbeError(f"--time {value!r}: must be positive")
    return minutes


def _gigabytes(value) -> int:
    if isinstance(value, int | float) and value > 0:
        return math.ceil(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", str(value).strip(), re.I)
    if not match:
        raise ProbeError(f"--mem {value!r}: expected a size such as 16G or 16000M")
    number, unit = float(match.group(1)), (match.group(2) or "M").upper()
    return max(1, math.ceil(number * {"M": 1 / 1024, "G": 1, "T": 1024}[unit]))


def slurm_parameters(settings: dict) -> dict:
    """[slurm] settings (the command line's over the file's) as submitit parameters."""
    params = {"nodes": 1, "tasks_per_node": 1,
              "cpus_per_task": int(settings.get("threads_per_job") or 1),
              "timeout_min": _minutes(settings.get("time") or 60)}
    if settings.get("gpus_per_job"):
        params["gpus_per_node"] = int(settings["gpus_per_job"])
    if settings.get("mem"):
        params["mem_gb"] = _gigabytes(settings["mem"])
    for key in ("partition", "account", "array_parallelism", "constraint", "qos"):
        if settings.get(key):
            params[f"slurm_{key}"] = settings[key]
    if settings.get("additional"):
        params["slurm_additional_parameters"] = dict(settings["additional"])
    return params


class SlurmTask:
    """What one array task runs: the job, resumed; submitit requeues it on preemption or
    timeout (`checkpoint` resubmits the same call, which resumes from the last checkpoint)."""

    def __init__(self, root: str, sweep_path: str, run_id: str, threads: int, gpus: int):
        self.root, self.sweep_path, self.run_id = root, sweep_path, run_id
        self.threads, self.gpus = threads, gpus

    def __call__(self) -> str:
        for key, value in thread_env(self.threads).items():
            os.environ.setdefault(key, value)
        import submitit

        store = Artifacts.at(self.root)
        sweep = load(self.sweep_path, store)
        try:  # the task's output is submitit's log of this SLURM job
            _write_state(store, sweep, self.run_id,
                         log=str(submitit.JobEnvironment().paths.stdout))
        except RuntimeError:
            pass
        return str(run_job(store, sweep, self.run_id, self.gpus, self.threads,
                           echo=lambda msg: print(msg, flush=True)))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.root, self.sweep_path,
                                                             self.run_id, self.threads,
                                                             self.gpus))


def submit_slurm(store: Artifacts, sweep: Sweep, settings: dict, echo=print) -> list[str]:
    """Submit every pending job as one SLURM job array through submitit; returns the SLURM
    job ids. Each task logs to submitit's folder and to sweeps/<name>/logs/."""
    import shutil

    if not shutil.which("sbatch"):
        raise ProbeError("--executor slurm: sbatch is not on PATH (run it on a SLURM login "
                         "node, or --executor print for another scheduler)")
    try:
        import submitit
    except ImportError:
        raise ProbeError("--executor slurm needs submitit: pip install 'probe[slurm]'") from None
    todo, rows = pending(store, sweep)
    echo(f"sweep {sweep.name}: {len(sweep.jobs)} jobs, "
         f"{sum(r['state'] == 'done' for r in rows)} done, "
         f"{sum(r['state'] == 'running' for r in rows)} running, {len(todo)} to submit")
    if not todo:
        return []
    folder = sweep_dir(store, sweep) / "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                     slurm_max_num_timeout=int(settings.get("max_requeues", 3)))
    executor.update_parameters(name=f"probe-{sweep.name}", **slurm_parameters(settings))
    threads = int(settings.get("threads_per_job") or 1)
    gpus = int(settings.get("gpus_per_job") or 0)
    tasks = [SlurmTask(str(store.root.resolve()), str(sweep.path.resolve()), j.run_id,
                       threads, gpus) for j in todo]
    try:
        submitted = executor.submit_array(tasks)
    except Exception as exc:  # sbatch refused: its message, in one line
        raise ProbeError(f"sbatch failed: {' '.join(str(exc).split())}") from None
    ids = []
    for job, task in zip(submitted, todo):
        _write_state(store, sweep, task.run_id, state="queued", slurm_job=job.job_id,
                     pid=None, host=None, error="")
        ids.append(job.job_id)
    echo(f"submitted {len(ids)} jobs as SLURM array {ids[0].split('_')[0]} "
         f"(logs: {folder}); follow with: probe sweep status {sweep.path}")
    return ids


def wait(store: Artifacts, sweep: Sweep, poll: float = 5.0, timeout: float | None = None,
         echo=print) -> list[dict]:
    """Until no job is pending or running (reading the same files `status` does)."""
    start = time.monotonic()
    while True:
        rows = status_table(store, sweep)
        if all(r["state"] in ("done", "failed") for r in rows):
            return rows
        if timeout is not None and time.monotonic() - start > timeout:
            return rows
        time.sleep(poll)
