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

`${name}` is replaced from [vars] (inside one argument), "@{name}" by the variable split into
several arguments as a shell would ("--n 10 --n 1000"); an argument "@runs" expands to the run
directories that the `train-split` steps returned, "@runs:K" to those of step K alone, and
`${artifacts}` is the experiment's artifacts root (for files a step writes and a later one reads).
A step with `scales = ["laptop"]` runs only at those scales of a `probe reproduce` target. Steps
run in this process through the CLI's own commands, so a step fails exactly as the command
would (one line), prefixed with its step number.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click

from probe.errors import ProbeError


def read_toml(path: str | Path, kind: str = "experiment") -> dict:
    """A TOML file (an experiment, a target, a sweep) as a dict; a missing, non-UTF-8 or
    malformed file is one line."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{kind} file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ProbeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProbeError(f"{path}: {exc}") from None


def load(path: str | Path) -> dict:
    path = Path(path)
    doc = read_toml(path)
    steps = doc.get("step")
    if not isinstance(steps, list) or not steps or not all(
            isinstance(s, dict) and isinstance(s.get("run"), list) and s["run"]
            and all(isinstance(a, str | int | float) for a in s["run"]) for s in steps):
        raise ProbeError(f"{path}: needs [[step]] tables, each with a run = [...] list of a "
                         "command and its arguments")
    if not isinstance(doc.get("vars", {}), dict):
        raise ProbeError(f"{path}: [vars] must be a table")
    for i, step in enumerate(steps, 1):
        scales = step.get("scales", [])
        if not isinstance(scales, list) or not all(isinstance(x, str) for x in scales):
            raise ProbeError(f"{path}: step {i}: scales must be a list of scale names")
    return doc


_RUNNING: list[Path] = []  # experiment files being run, outermost first (a step may run one)


def check_step(args: list[str], artifacts_root: str) -> None:
    """A step is a command with its arguments: it inherits the experiment's artifacts root and
    may not override it, nor --resume a run outside it."""
    if not args or str(args[0]).startswith("-"):
        raise ProbeError(f"a step starts with a command name, got {args[:1] or 'nothing'} "
                         "(steps inherit the experiment's --artifacts)")
    root = Path(artifacts_root).resolve()
    for i, arg in enumerate(args):
        if arg == "--artifacts" or arg.startswith("--artifacts="):
            raise ProbeError(f"{args[0]}: a step may not set --artifacts (it writes under the "
                             f"experiment's root, {artifacts_root})")
        if arg == "--resume" or arg.startswith("--resume="):
            target = arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "")
            if target and not Path(target).resolve().is_relative_to(root):
                raise ProbeError(f"{args[0]}: --resume {target} is outside the experiment's "
                                 f"artifacts root {artifacts_root}")


def expand(args: list[str], variables: dict[str, str], runs: dict[int, list[str]]
           ) -> list[str]:
    """`args` with ${var} substituted and @runs / @runs:K replaced by run directories (`runs`:
    step number -> the runs it trained)."""
    out = []
    for arg in args:
        if arg == "@runs" or str(arg).startswith("@runs:"):
            step = str(arg)[6:]
            if step and not step.isdigit():
                raise ProbeError(f"{arg}: expected @runs or @runs:STEP")
            chosen = runs.get(int(step), []) if step else \
                list(dict.fromkeys(r for done in runs.values() for r in done))
            if not chosen:
                raise ProbeError(f"{arg} used before a train-split step produced a run")
            out += chosen
            continue

        split = re.fullmatch(r"@\{(\w+)\}", str(arg))
        if split:  # the artifacts root stays one argument, whatever characters it holds
            quoted = {**variables, **({"artifacts": shlex.quote(variables["artifacts"])}
                                      if "artifacts" in variables else {})}
            out += shlex.split(substitute(f"${{{split.group(1)}}}", quoted))
        else:
            out.append(substitute(str(arg), variables))
    return out


def substitute(text: str, variables: dict[str, str], depth: int = 0) -> str:
    """${name} replaced from `variables`, whose values may name other variables (a scale's
    `data` naming `${root}`), up to a few levels deep."""
    def sub(match):
        key = match.group(1)
        if key not in variables:
            raise ProbeError(f"undefined experiment variable ${{{key}}}")
        return str(variables[key])

    out = re.sub(r"\$\{(\w+)\}", sub, text)
    if "${" in out and depth < 4:
        return substitute(out, variables, depth + 1)
    return out


def run_command(args: list[str]):
    """One `probe` command in this process; returns what the command returns (train-split: its
    run directories)."""
    from probe.cli import cli

    try:
        with cli.make_context("probe", list(args)) as ctx:
            return cli.invoke(ctx)
    except click.exceptions.Exit:  # --help and friends
        return None
    except click.ClickException as exc:
        raise ProbeError(exc.format_message()) from None


def variables_of(doc: dict, overrides: dict[str, str], where: str,
                 extra: dict | None = None) -> dict[str, str]:
    """[vars] (and `extra`, a scale's vars, over them), then the --set overrides, which may only
    name variables the file has."""
    variables = {k: str(v) for k, v in {**doc.get("vars", {}), **(extra or {})}.items()}
    unknown = set(overrides) - set(variables)
    if unknown:
        raise ProbeError(f"--set {sorted(unknown)[0]}: not a variable of {where} "
                         f"(has {', '.join(sorted(variables)) or 'none'})")
    return {**variables, **overrides}


def run_experiment(path: str | Path, artifacts_root: str, overrides: dict[str, str],
                   dry_run: bool = False, echo=print) -> list[str]:
    """Run every step in order through the real CLI; returns the runs trained."""
    doc = load(path)
    here = Path(path).resolve()
    if here in _RUNNING:
        raise ProbeError(f"{path} runs itself (through {' -> '.join(p.name for p in _RUNNING)})")
    _RUNNING.append(here)
    try:
        return run_steps(doc, variables_of(doc, overrides, str(path)), artifacts_root, dry_run,
                         echo)
    finally:
        _RUNNING.pop()


def run_steps(doc: dict, variables: dict[str, str], artifacts_root: str, dry_run: bool = False,
              echo=print, scale: str | None = None) -> list[str]:
    """The [[step]] commands of `doc` in order, with `variables`; returns the runs trained.
    With `scale`, steps whose `scales` leave it out are skipped (their numbers are kept)."""
    runs: dict[int, list[str]] = {}
    variables = {**variables, "artifacts": str(artifacts_root)}
    for i, step in enumerate(doc["step"], 1):
        if scale is not None and scale not in step.get("scales", [scale]):
            echo(f"[{i}/{len(doc['step'])}] skipped at {scale} scale "
                 f"(runs at {', '.join(step['scales'])})")
            continue
        args = expand(step["run"], variables, runs)
        try:
            check_step(args, artifacts_root)
        except ProbeError as exc:
            raise ProbeError(f"step {i}: {exc}") from None
        echo(f"[{i}/{len(doc['step'])}] $ probe --artifacts {artifacts_root} "
             + " ".join(shlex.quote(a) for a in args))
        if dry_run:
            if args[0] == "train-split":
                runs[i] = [f"<runs of step {i}>"]
            continue
        try:
            result = run_command(["--artifacts", artifacts_root, *args])
        except ProbeError as exc:
            raise ProbeError(f"step {i} ({args[0]}): {exc}") from None
        if args[0] == "train-split" and result:
            runs[i] = [str(r) for r in result]
    return list(dict.fromkeys(r for done in runs.values() for r in done))
