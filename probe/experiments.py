"""Experiments: one TOML file per paper figure or sweep, run by `probe experiment FILE`.

An experiment is an ordered list of ordinary `probe` commands, so every step can also be run
(and re-run) by hand. Steps are resumable like the commands themselves: rerunning an experiment
skips finished training runs and finished probe outputs.

    name = "demo"
    description = "..."
    [vars]                      # defaults; override with --set KEY=VALUE
    steps = "600"
    [[step]]
    run = ["train-split", "--n", "10", "--steps", "${steps}"]
    [[step]]
    run = ["attention-locality", "@runs"]   # @runs: every run trained by earlier steps

`${name}` is replaced from [vars]; an argument "@runs" expands to the run directories that the
`train-split` steps printed (`run: PATH`).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import tomllib
from pathlib import Path

from probe.errors import ProbeError

RUN_LINE = re.compile(r"^run: (.+)$", re.MULTILINE)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"experiment file not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProbeError(f"{path}: {exc}") from None
    steps = doc.get("step")
    if not steps or not all(isinstance(s.get("run"), list) for s in steps):
        raise ProbeError(f"{path}: needs [[step]] tables, each with a run = [...] list")
    return doc


def expand(args: list[str], variables: dict[str, str], runs: list[str]) -> list[str]:
    out = []
    for arg in args:
        if arg == "@runs":
            if not runs:
                raise ProbeError("@runs used before any train-split step produced a run")
            out += runs
            continue

        def sub(match):
            key = match.group(1)
            if key not in variables:
                raise ProbeError(f"undefined experiment variable ${{{key}}}")
            return str(variables[key])

        out.append(re.sub(r"\$\{(\w+)\}", sub, str(arg)))
    return out


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def run_experiment(path: str | Path, artifacts_root: str, overrides: dict[str, str],
                   dry_run: bool = False, echo=print) -> list[str]:
    """Run every step in order through the real CLI; returns the runs trained."""
    from probe.cli import cli

    doc = load(path)
    variables = {k: str(v) for k, v in doc.get("vars", {}).items()}
    unknown = set(overrides) - set(variables)
    if unknown:
        raise ProbeError(f"--set {sorted(unknown)[0]}: not a variable of {path} "
                         f"(has {', '.join(variables) or 'none'})")
    variables.update(overrides)
    runs: list[str] = []
    for i, step in enumerate(doc["step"], 1):
        args = expand(step["run"], variables, runs)
        echo(f"[{i}/{len(doc['step'])}] $ probe --artifacts {artifacts_root} "
             + " ".join(shlex.quote(a) for a in args))
        if dry_run:
            if args[0] == "train-split":
                runs.append(f"<runs of step {i}>")
            continue
        captured = io.StringIO()
        with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
            try:
                cli.main(["--artifacts", artifacts_root, *args], prog_name="probe")
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise ProbeError(f"step {i} ({args[0]}) failed") from None
        runs += [r for r in RUN_LINE.findall(captured.getvalue()) if r not in runs]
    return runs
