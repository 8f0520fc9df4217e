"""`probe reproduce`: every figure and table of both papers as a target, one command each.

A target is an experiment file under experiments/reproduce/ (ordinary `probe` commands, see
probe.experiments) with what it shows, the paper's figure and numbers, a variable set per scale
and the check of its expectation (probe.report.checks):

    name = "kadkhodaie-fig2"
    paper = "Kadkhodaie et al. (ICLR 2024), Fig. 2"
    shows = "..."                    # one line for --list
    paper_numbers = "..."            # what the paper reports, quoted beside the laptop result
    check = "memorization_transition"
    [check_args]                     # keyword arguments of the check
    [scale.laptop]                   # embedded or synthetic data, minutes on a 2-core CPU
    minutes = 9                      # measured: its wall time in `probe reproduce --all`
    vars = {...}
    [scale.paper]                    # the paper's data, sizes, N and lengths: GPUs
    minutes = "..."                  # an estimate
    needs = ["root"]                 # variables a user must set (--set root=DIR)
    vars = {...}
    [[step]] ...

Targets share their training runs: a run is named by its configuration, so a `train-split` that
another target already ran finds the finished run and returns it at once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from probe import artifacts
from probe.artifacts import Artifacts
from probe.errors import ProbeError
from probe.experiments import load, run_steps, variables_of

TARGETS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "reproduce"
SCALES = ("laptop", "paper")
UNSET = "<unset>"  # a needed variable on a dry run


def targets(directory: Path = TARGETS_DIR) -> dict[str, dict]:
    """Every target file, by name."""
    out = {}
    for path in sorted(directory.glob("*.toml")):
        doc = load(path)
        doc["path"] = path
        for i, step in enumerate(doc["step"], 1):
            unknown = set(step.get("scales", SCALES)) - set(SCALES)
            if unknown or ("scales" in step and not step["scales"]):
                raise ProbeError(f"{path}: step {i}: scales must name some of "
                                 f"{', '.join(SCALES)}, got {step['scales']}")
        out[doc.get("name", path.stem)] = doc
    return out


def target(name: str, directory: Path = TARGETS_DIR) -> dict:
    found = targets(directory)
    if name not in found:
        raise ProbeError(f"unknown target {name!r}; `probe reproduce --list` shows them: "
                         + ", ".join(found))
    return found[name]


def scale_of(doc: dict, scale: str) -> dict:
    if scale not in SCALES:
        raise ProbeError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    scales = doc.get("scale", {})
    if scale not in scales:
        raise ProbeError(f"{doc['name']} has no {scale} scale")
    return scales[scale]


def resolve(doc: dict, scale: str, overrides: dict[str, str], dry_run: bool = False
            ) -> dict[str, str]:
    """The target's variables at `scale` with the --set overrides. A variable the scale needs
    (a data set's location) must be given, and must exist, unless this is a dry run."""
    chosen = scale_of(doc, scale)
    variables = variables_of(doc, overrides, f"target {doc['name']}", chosen.get("vars", {}))
    for need in chosen.get("needs", []):
        value = variables.get(need, "")
        if not value:
            if dry_run:
                variables[need] = UNSET
                continue
            raise ProbeError(f"{doc['name']} at {scale} scale needs --set {need}=DIR: "
                             f"{chosen.get('needs_help', 'the data set folder')}")
        if not Path(value).exists():
            raise ProbeError(f"{doc['name']}: --set {need}={value}: no such folder")
    return variables


def split_overrides(names: list[str], overrides: dict[str, str], scale: str = "laptop",
                    directory: Path = TARGETS_DIR) -> dict[str, dict[str, str]]:
    """Each target's share of the --set overrides at `scale`. One target takes them all (a
    key it lacks is its error); run together, a target takes the keys it has at that scale,
    and a key none has is an error."""
    if len(names) == 1:
        return {names[0]: overrides}
    found = targets(directory)
    has = {n: {*found[n].get("vars", {}), *scale_of(found[n], scale).get("vars", {})}
           for n in names}
    unused = set(overrides) - set().union(*has.values())
    if unused:
        raise ProbeError(f"--set {sorted(unused)[0]}: not a variable of any target at {scale} "
                         "scale")
    return {n: {k: v for k, v in overrides.items() if k in has[n]} for n in names}


def run_target(name: str, store: Artifacts, scale: str = "laptop",
               overrides: dict[str, str] | None = None, dry_run: bool = False, echo=print,
               directory: Path = TARGETS_DIR) -> dict[str, dict]:
    """Run (or dry-run) a target's steps; returns {run id: config.json} of the runs it
    trained (empty on a dry run)."""
    doc = target(name, directory)
    variables = resolve(doc, scale, overrides or {}, dry_run)
    run_dirs = run_steps(doc, variables, str(store.root), dry_run, echo, scale)
    if dry_run:
        return {}
    return {Path(d).name: artifacts.read_json(Path(d) / artifacts.RUN_CONFIG) for d in run_dirs}


def check_target(name: str, store: Artifacts, runs: dict[str, dict],
                 directory: Path = TARGETS_DIR):
    """The target's expectation on the tables its runs produced: a probe.report.checks
    Verdict."""
    from probe.report.checks import CHECKS

    doc = target(name, directory)
    check = doc.get("check")
    if check not in CHECKS:
        raise ProbeError(f"{name}: unknown check {check!r}")
    return CHECKS[check](store, runs, **doc.get("check_args", {}))


def listing(directory: Path = TARGETS_DIR) -> list[dict]:
    """One row per target for --list: name, paper figure, what it shows, cost per scale."""
    rows = []
    for name, doc in targets(directory).items():
        scales = doc.get("scale", {})
        rows.append({"name": name, "paper": doc.get("paper", ""), "shows": doc.get("shows", ""),
                     **{f"{s}_minutes": scales.get(s, {}).get("minutes", "?") for s in SCALES}})
    return rows


TABLES = (artifacts.GENERALIZATION_TABLE, artifacts.BASIS_TABLE, artifacts.LOCALITY_TABLE,
          artifacts.ATTRIBUTION_TABLE)


def commit_of(directory: Path = TARGETS_DIR) -> str:
    """The git commit the code ran at ("" outside a checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def publish(name: str, store: Artifacts, runs: dict[str, dict], verdict, out: Path,
            since: float, record: dict) -> Path:
    """docs/results/<target>/: its rows of every table (CSV), the figures drawn since `since`
    (this target's), and verdict.json (the check, its numbers, the command, commit and wall
    time in `record`)."""
    from probe.metrics.tables import read_table

    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        df = read_table(store.table(table))
        if df is not None and "run" in df.columns:
            mine = df[df["run"].isin(list(runs))]
            if len(mine):
                artifacts.write_text(folder / f"{table}.csv", mine.to_csv(index=False))
    figures = store.figures_dir
    for path in sorted(figures.rglob("*.png")) if figures.is_dir() else []:
        if path.stat().st_mtime >= since:
            target = folder / "figures" / path.relative_to(figures)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    numbers = json.loads(json.dumps(verdict.numbers, default=_plain))  # numpy scalars too
    artifacts.write_json(folder / "verdict.json", {
        "target": name, "holds": bool(verdict.ok), "reason": verdict.reason,
        "numbers": numbers, "runs": sorted(runs), **record})
    return folder


def results_readme(out: Path, directory: Path = TARGETS_DIR) -> Path:
    """OUT/README.md: every published target's laptop result beside the paper's numbers, with
    the command, commit and wall time that made it, then OUT/NOTES.md (written by hand: where
    and why a result disagrees with the paper) when it exists."""

    out = Path(out)
    lines = ["# Laptop-scale reproductions, as measured", "",
             "Made by `probe reproduce --all --check --publish docs/results` (one target: NAME "
             "for --all) on a 2-core CPU (no GPU). Each folder holds the target's tables (CSV), "
             "figures and verdict.json; the wall time is the target's own in that run (a target "
             "whose runs an earlier one trained pays only for its probes).",
             "", "| target | paper | the paper reports | measured here | check | wall time |",
             "|---|---|---|---|---|---|"]
    found = targets(directory)
    details = []
    for verdict_path in sorted(out.glob("*/verdict.json")):
        verdict = json.loads(verdict_path.read_text())
        doc = found.get(verdict["target"], {})
        minutes = verdict.get("wall_s", 0) / 60
        lines.append(f"| [{verdict['target']}]({verdict['target']}/) | {doc.get('paper', '')} | "
                     f"{doc.get('paper_numbers', '')} | {verdict['reason']} | "
                     f"{'holds' if verdict['holds'] else 'does not hold'} | {minutes:.1f} min |")
        details += [f"- `{verdict['target']}`: `{verdict.get('command', '')}` at commit "
                    f"`{verdict.get('commit', '')[:12]}`"]
    lines += ["", "Commands and commits:", "", *details, ""]
    notes = out / "NOTES.md"
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    return artifacts.write_text(out / "README.md", "\n".join(lines))
