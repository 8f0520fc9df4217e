"""What `probe reproduce NAME --check` tests: each target's stated expectation, evaluated on
the tables its runs produced. A check is called as `check(store, runs, **args)`, `runs`
mapping the id of each run the target trained to its config.json, and returns a `Verdict`:
whether it holds, one line saying why, and the numbers it read (which `probe reproduce` prints
and docs/results quotes).

Checks state the *direction* a paper reports (similarity rises with N, the UNet's basis is more
harmonic than the DiT's, ...) plus, where the paper gives numbers with an analytic optimum (the
C^alpha slopes), a tolerance. They never compare against a number tuned to this tool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from probe import artifacts
from probe.artifacts import Artifacts
from probe.metrics.tables import read_table


@dataclass
class Verdict:
    ok: bool
    reason: str
    numbers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ok = bool(self.ok)  # numpy comparisons give numpy booleans


def _table(store: Artifacts, name: str, runs: dict) -> pd.DataFrame:
    df = read_table(store.table(name))
    if df is None:
        return pd.DataFrame(columns=["run", "arch", "n", "sigma", "metric", "value"])
    return df[df["run"].isin(list(runs))]


def _per(df: pd.DataFrame, metric: str, by: list[str]) -> pd.Series:
    rows = df[df["metric"] == metric]
    return rows.groupby(by)["value"].mean()


def memorization_transition(store: Artifacts, runs: dict, *, arch: str | None = None,
                            small_copies: float = 0.5, large_copies: float = 0.2,
                            rise: float = 0.3) -> Verdict:
    """Kadkhodaie et al.: at the smallest N most samples copy a training image and the two
    splits disagree; at the largest N few copy and the splits agree (similarity higher by
    `rise`). The transition N is the smallest N whose copy fraction falls below one half."""
    df = _table(store, artifacts.GENERALIZATION_TABLE, runs)
    if arch:
        df = df[df["arch"] == arch]
    # N = 1 has no second neighbour, so no NN ratio (NaN): the test starts at the smallest N
    # where it is defined
    copies = _per(df, "memorized_fraction_normalised", ["n"]).dropna()
    similarity = _per(df, "similarity_normalised_median", ["n"])
    if len(copies) < 2 or similarity.empty:
        return Verdict(False, "needs generalization rows of split pairs at two N or more")
    ns = sorted(copies.index)
    small, large = ns[0], ns[-1]
    below = [n for n in ns if copies[n] < 0.5]
    numbers = {"n": [int(n) for n in ns], "memorized": [round(float(copies[n]), 3) for n in ns],
               "similarity": [round(float(similarity.get(n, math.nan)), 3) for n in ns],
               "transition_n": int(below[0]) if below else None}
    problems = []
    if copies[small] < small_copies:
        problems.append(f"only {copies[small]:.0%} copies at N = {small}")
    if copies[large] > large_copies:
        problems.append(f"{copies[large]:.0%} copies at N = {large}")
    if not similarity.get(large, math.nan) >= similarity.get(small, math.nan) + rise:
        problems.append(f"a/b similarity {similarity.get(small, math.nan):.2f} at N = {small}, "
                        f"{similarity.get(large, math.nan):.2f} at N = {large}")
    if problems:
        return Verdict(False, "; ".join(problems), numbers)
    return Verdict(True, f"copies {copies[small]:.0%} -> {copies[large]:.0%}, a/b similarity "
                         f"{similarity[small]:.2f} -> {similarity[large]:.2f}; transition at "
                         f"N = {numbers['transition_n']}", numbers)


PAPER_CALPHA = {1.0: 0.46, 2.0: 0.61, 3.0: 0.75, 5.0: 0.83}  # Kadkhodaie et al.'s UNet


def psnr_slope(df: pd.DataFrame) -> float:
    """Slope of output PSNR against input PSNR (both in dB, [-1, 1] scale: input PSNR =
    10 log10(4 / sigma^2)) over the held-out PSNR curve; the optimal denoiser of C^alpha images
    reaches alpha / (alpha + 1)."""
    rows = df[df["metric"] == "psnr_test"].groupby("sigma")["value"].mean()
    x = 10 * np.log10(4 / np.asarray(rows.index, float) ** 2)
    return float(np.polyfit(x, rows.to_numpy(), 1)[0])


def calpha_slopes(store: Artifacts, runs: dict, *, tolerance: float = 0.1) -> Verdict:
    """PSNR slope per alpha within `tolerance` of Kadkhodaie et al.'s (the optimum is
    alpha / (alpha + 1)); a run's alpha is its data configuration's."""
    df = _table(store, artifacts.GENERALIZATION_TABLE, runs)
    slopes = {}
    for run, rows in df.groupby("run"):
        data = runs[run].get("data", {})
        if data.get("dataset") == "c-alpha":
            slopes[float(data.get("alpha", 2.0))] = psnr_slope(rows)
    if not slopes:
        return Verdict(False, "no c-alpha runs with PSNR curves")
    gaps = {a: slopes[a] - PAPER_CALPHA[a] for a in slopes if a in PAPER_CALPHA}
    numbers = {"slopes": {str(a): round(s, 3) for a, s in sorted(slopes.items())},
               "optimal": {str(a): round(a / (a + 1), 3) for a in sorted(slopes)},
               "paper": {str(a): PAPER_CALPHA.get(a) for a in sorted(slopes)},
               "gap": {str(a): round(g, 3) for a, g in sorted(gaps.items())}}
    worst = max(gaps, key=lambda a: abs(gaps[a])) if gaps else None
    if worst is None or abs(gaps[worst]) > tolerance:
        return Verdict(False, f"slope at alpha = {worst:g} is {slopes[worst]:.2f}, the paper's "
                              f"{PAPER_CALPHA[worst]:.2f}" if worst else "no paper alpha", numbers)
    return Verdict(True, "slopes " + ", ".join(f"{s:.2f} (paper {PAPER_CALPHA[a]:.2f})"
                                               for a, s in sorted(slopes.items())), numbers)


def disks_dimension(store: Artifacts, runs: dict, *, dims: int = 5, slack: int = 2) -> Verdict:
    """Kadkhodaie et al.'s disks (5 parameters): at the smallest sigma about 5 eigenvalues of the
    Jacobian stay near 1 (the index of the first below 1/2 lies in dims +- slack)."""
    df = _table(store, artifacts.BASIS_TABLE, runs)
    rows = df[df["metric"] == "eigen_below_half"]
    if rows.empty:
        return Verdict(False, "no jacobian-basis rows")
    sigma = rows["sigma"].min()
    at = rows[rows["sigma"] == sigma]
    count = float(at["value"].median())
    numbers = {"sigma": float(sigma), "eigenvalues_above_half": count}
    if math.isnan(count):  # every stored eigenvalue stays above 1/2
        return Verdict(False, f"all {int(at['k'].max())} stored eigenvalues above 1/2 at sigma "
                              f"{sigma:g} (disks: {dims})", numbers)
    ok = abs(count - dims) <= slack
    return Verdict(ok, f"{count:g} eigenvalues above 1/2 at sigma {sigma:g} (disks: {dims})",
                   numbers)


def harmonic_order(store: Artifacts, runs: dict, *, more: list[str] | None = None,
                   less: list[str] | None = None, minimum: float = 0.0) -> Verdict:
    """Harmonicity of the Jacobian eigenvectors (probe.metrics.basis): every architecture in
    `more` above every one in `less` (An et al. Fig. 1), or all above `minimum` (GAHB)."""
    df = _table(store, artifacts.BASIS_TABLE, runs)
    by_arch = _per(df, "harmonicity_eigen", ["arch"])
    if by_arch.empty:
        return Verdict(False, "no harmonicity rows")
    numbers = {a: round(float(v), 3) for a, v in by_arch.items()}
    if more and less:
        ok = min(by_arch.get(a, -math.inf) for a in more) > \
            max(by_arch.get(a, math.inf) for a in less)
        return Verdict(ok, "harmonicity " + ", ".join(f"{a} {v:.2f}" for a, v in numbers.items()),
                       numbers)
    ok = bool((by_arch > minimum).all())
    return Verdict(ok, "harmonicity " + ", ".join(f"{a} {v:.2f}" for a, v in numbers.items()),
                   numbers)


def gap_falls_with_n(store: Artifacts, runs: dict) -> Verdict:
    """An et al.: the PSNR gap of every architecture falls as N grows."""
    df = _table(store, artifacts.GENERALIZATION_TABLE, runs)
    gaps = _per(df, "psnr_gap_mean", ["arch", "n"])
    if gaps.empty:
        return Verdict(False, "no PSNR-gap rows")
    numbers = {arch: {int(n): round(float(v), 2) for n, v in g.droplevel(0).items()}
               for arch, g in gaps.groupby(level=0)}
    bad = [a for a, g in numbers.items() if list(g.values()) != sorted(g.values(), reverse=True)]
    return Verdict(not bad, ("gap does not fall with N for " + ", ".join(bad)) if bad else
                   "; ".join(f"{a}: " + ", ".join(f"N={n} {v} dB" for n, v in g.items())
                             for a, g in numbers.items()), numbers)


def locality_rises_with_n(store: Artifacts, runs: dict, *, metric: str = "mass_r1",
                          layers: int = 2) -> Verdict:
    """An et al. Fig. 4: the early layers' attention gets more local as N grows (the mass
    within one token of the query, averaged over the first `layers` layers, rises)."""
    df = _table(store, artifacts.LOCALITY_TABLE, runs)
    early = df[(df["metric"] == metric) & (df["layer"] < layers)]
    per_n = early.groupby("n")["value"].mean()
    if len(per_n) < 2:
        return Verdict(False, "needs locality rows at two N or more")
    numbers = {int(n): round(float(v), 4) for n, v in per_n.items()}
    ok = per_n.iloc[-1] > per_n.iloc[0]
    return Verdict(ok, f"early-layer {metric}: " + ", ".join(f"N={n} {v}" for n, v in
                                                             numbers.items()), numbers)


def windows_lower_gap(store: Artifacts, runs: dict, *, large_change: float = 0.5) -> Verdict:
    """An et al.: local windows lower the PSNR gap at the smallest N and change it little
    (below `large_change` dB) at the largest."""
    df = _table(store, artifacts.GENERALIZATION_TABLE, runs)
    if df.empty:
        return Verdict(False, "no PSNR-gap rows")
    gaps = df[df["metric"] == "psnr_gap_mean"]
    gaps = gaps.assign(windowed=[bool(runs[r].get("model", {}).get("windows"))
                                 for r in gaps["run"]])
    per = gaps.groupby(["n", "windowed"])["value"].mean()
    ns = sorted(gaps["n"].unique())
    try:
        small = per[(ns[0], True)] - per[(ns[0], False)]
        large = per[(ns[-1], True)] - per[(ns[-1], False)]
    except KeyError:
        return Verdict(False, "needs windowed and global runs at the smallest and largest N")
    numbers = {"gap_change_small_n": round(float(small), 3),
               "gap_change_large_n": round(float(large), 3)}
    reason = (f"windows change the gap by {small:+.2f} dB at N = {ns[0]} and "
              f"{large:+.2f} dB at N = {ns[-1]}")
    fid = df[(df["metric"] == "fid") & df["value"].notna()]
    if len(fid):  # reported beside the gap, as the paper does; the expectation is the gap's
        kind = str(fid["note"].iloc[0]).split(":")[0]
        fid = fid.assign(windowed=[bool(runs[r].get("model", {}).get("windows"))
                                   for r in fid["run"]])
        per_fid = fid.groupby(["n", "windowed"])["value"].mean()
        numbers["fid"] = {f"N={int(n)} {'windows' if w else 'global'}": round(float(v), 2)
                          for (n, w), v in per_fid.items()}
        numbers["fid_features"] = kind
        reason += "; FID ({}) global -> windows: {}".format(kind, ", ".join(
            f"N = {int(n)} {per_fid.get((n, False), float('nan')):.1f} -> "
            f"{per_fid.get((n, True), float('nan')):.1f}" for n in ns))
    ok = small < 0 and abs(large) < large_change
    return Verdict(ok, reason, numbers)


def els_closer_than_ideal(store: Artifacts, runs: dict) -> Verdict:
    """Kamb & Ganguli: at the largest N the ELS machine's samples match the trained model's
    (median trajectory r^2) better than the ideal denoiser's do."""
    df = _table(store, artifacts.COMPARE_TABLE, runs)
    rows = df[df["metric"] == "trajectory_r2"]
    if rows.empty:
        return Verdict(False, "no compare rows")
    per = rows.groupby(["n", "theory"])["value"].mean()
    numbers = {int(n): {t: round(float(v), 3) for t, v in g.droplevel(0).items()}
               for n, g in per.groupby(level=0)}
    largest = max(numbers)
    els, ideal = numbers[largest].get("els"), numbers[largest].get("ideal")
    if els is None or ideal is None:
        return Verdict(False, "needs els and ideal rows", numbers)
    return Verdict(els > ideal, f"N = {largest}: median trajectory r^2 ELS {els:.2f}, "
                                f"ideal {ideal:.2f}", numbers)


CHECKS = {"memorization_transition": memorization_transition, "calpha_slopes": calpha_slopes,
          "disks_dimension": disks_dimension, "harmonic_order": harmonic_order,
          "gap_falls_with_n": gap_falls_with_n, "locality_rises_with_n": locality_rises_with_n,
          "windows_lower_gap": windows_lower_gap, "els_closer_than_ideal": els_closer_than_ideal}
