"""The MiniLM demo's verdicts (computed from this run's numbers), tables, plots and report."""
import json
import math
from pathlib import Path
from typing import Dict, List

from ..plots import save_figure
from ..io import atomic_path
from .report import table

# A group of slots shows "a shared low-dimensional subspace" only when all of these hold (means
# over the modules of the group): its cumulative explained variance at r(0.9) beats the Gaussian
# null's at the same rank by GAIN points, r(0.9) is at most RANK_FRACTION of the null's r(0.9),
# at least one component stands above the Marchenko–Pastur edge, and the two split halves agree
# (mean cos² of their principal angles at least STABLE: each half's subspace holds most of the
# other's).
GAIN = 10.0
RANK_FRACTION = 0.5
STABLE = 0.5


def diff_se(pairs, n: int):
    """Mean difference (points) of paired accuracies (a_t, b_t) over tasks and its standard error:
    each accuracy a binomial proportion on n test snippets (independent, a conservative bound)."""
    d = [points(a, b) for a, b in pairs]
    var = sum(a * (1 - a) / n + b * (1 - b) / n for a, b in pairs) / len(pairs) ** 2
    return sum(d) / len(d), 100.0 * var ** 0.5


def points(a: float, b: float) -> float:
    return 100.0 * (a - b)


def structure_verdict(g: Dict) -> str:
    facts = (f"r(0.9) = {g['r90']:.1f} of {g['dim']} (the null's {g['null_r90']:.1f}), {g['gain_points']:+.1f} points of "
             f"explained variance over the Gaussian null at that rank, {g['above_mp_edge']:.1f} components above the "
             f"Marchenko–Pastur edge, split halves mean cos² {g['split_half_mean_cos2']:.2f}")
    where = f"{g['subzoo']} zoo, {g['where']}"
    low = g["r90"] <= RANK_FRACTION * g["null_r90"]
    beats = g["gain_points"] >= GAIN and g["above_mp_edge"] >= 1
    stable = g["split_half_mean_cos2"] >= STABLE  # False for NaN: no split halves, no stability claim
    if low and beats and stable:
        return f"{where}: a shared low-dimensional subspace — {facts}."
    if beats and not stable:
        return (f"{where}: more concentrated than the null but NOT stable across split halves, so not evidence of "
                f"a shared subspace with {g['models']} adapters — {facts}.")
    if beats:
        return f"{where}: structure beyond the null, but not low-dimensional next to it — {facts}."
    return f"{where}: NO structure beyond the null — {facts}."


def structural(summary: List[Dict]) -> List[Dict]:
    """The groups a subspace claim is about: lora_A's input side, lora_B's output side and the
    model axis of ΔW (the r-dimensional sides, A [out] and B [in], cannot be low-dimensional)."""
    return [g for g in summary if (g["factor"], g["mode"]) in (("A", "in"), ("B", "out"), ("ΔW", "delta"))]


def sh_b(results: Dict, subzoo: str) -> float:
    g = [g for g in results["spectra_summary"] if g["subzoo"] == subzoo and g["where"] == "B [out]"]
    return g[0]["gain_points"] if g else float("nan")


def verdicts(results: Dict) -> List[str]:
    out = []
    for g in structural(results["spectra_summary"]):
        out.append(structure_verdict(g))
    sh = {g["subzoo"]: g for g in results["spectra_summary"] if g["factor"] == "A" and g["mode"] == "in"}
    ini = results["initialisation"]
    if "shared-init" in sh and "own-init" in sh:
        s, o = sh["shared-init"], sh["own-init"]
        si, oi = ini["shared-init"], ini["own-init"]
        word = "most" if s["mean_share"] > 0.5 else ("part" if s["mean_share"] > 2 * o["mean_share"] else "little")
        out.append(f"Shared initialisation: trained lora_A factors keep {si['A_energy_in_own_init_rows']:.0%} "
                   f"(shared-init) and {oi['A_energy_in_own_init_rows']:.0%} (own-init) of their energy in the row "
                   f"space they started from (chance {oi['chance']:.0%}; an unrelated init's rows: "
                   f"{oi['A_energy_in_unrelated_init_rows']:.0%}). With one init for all, that row space is common: "
                   f"the mean (the init plus the average change) carries {s['mean_share']:.0%} of the lora_A energy "
                   f"({o['mean_share']:.0%} with own inits), so {word} of what an uncentred analysis calls the shared "
                   f"A subspace is the initialisation. After centring, the shared-init zoo's A [in] beats its null "
                   f"by {s['gain_points']:.1f} points, the own-init zoo's by {o['gain_points']:.1f}: each adapter's "
                   f"own random init, which stays in its factors, hides whatever the training changes share. lora_B, which starts at "
                   f"zero in both, beats its null by {sh_b(results, 'shared-init'):.1f} / "
                   f"{sh_b(results, 'own-init'):.1f} points (shared / own init).")
    ho = results["held_out"]
    tasks = sorted({r["task"] for r in ho})
    by = {(r["task"], r["method"]): r for r in ho}
    names = [r["method"] for r in ho if r["task"] == tasks[0]]
    head, lora = names[0], names[1]
    own = next(n for n in names if n.endswith("own-init zoo"))
    shared = next(n for n in names if n.endswith("shared-init zoo"))
    rnd = next(n for n in names if n.endswith("random"))
    mean = lambda n: sum(by[(t, n)]["accuracy"] for t in tasks) / len(tasks)  # noqa: E731
    n = results["test_snippets"]
    d_rnd = [points(by[(t, own)]["accuracy"], by[(t, rnd)]["accuracy"]) for t in tasks]
    D, se = diff_se([(by[(t, own)]["accuracy"], by[(t, rnd)]["accuracy"]) for t in tasks], n)
    Ds, ses = diff_se([(by[(t, shared)]["accuracy"], by[(t, rnd)]["accuracy"]) for t in tasks], n)
    word = lambda D, se: "beat" if D > 2 * se else ("lost to" if D < -2 * se else "did not clearly differ from")  # noqa: E731
    out.append(f"Held-out tasks ({len(tasks)}, one seed each, {n} test snippets): coefficient-only training in the "
               f"own-init zoo's subspace ({by[(tasks[0], own)]['trainable']:,} trainable numbers) {word(D, se)} the same "
               f"number in a random subspace ({D:+.1f} ± {se:.1f} points, per task "
               f"{', '.join(f'{d:+.1f}' for d in d_rnd)}); in the shared-init zoo's subspace it {word(Ds, ses)} the "
               f"random one ({Ds:+.1f} ± {ses:.1f}). Mean accuracy {mean(own):.1%} (own-init subspace), {mean(shared):.1%} "
               f"(shared-init subspace), {mean(rnd):.1%} (random), {mean(lora):.1%} for plain LoRA "
               f"({by[(tasks[0], lora)]['trainable']:,}) and {mean(head):.1%} without an adapter.")
    mg = results["merging"]
    meths = mg["methods"]
    best = max(meths, key=lambda k: meths[k]["merged_mean"])
    own_mean = mg["each adapter on its own task"]["merged_mean"]
    sub = next(k for k in meths if k.startswith("subspace"))
    count = mg["adapters merged"]
    Dm, sem = diff_se(list(zip(meths[sub]["per_task"][:count], meths["mean"]["per_task"][:count])),
                      results["test_snippets"])
    out.append(f"Merging {mg['adapters merged']} {mg['subzoo']} adapters into one: best {best} at "
               f"{meths[best]['merged_mean']:.1%} mean accuracy on the merged tasks "
               f"({points(meths[best]['merged_mean'], own_mean):+.1f} points against each adapter on its own task, "
               f"{own_mean:.1%}; no adapter: {mg['base_merged_mean']:.1%}); subspace merge {meths[sub]['merged_mean']:.1%}, "
               f"mean {meths['mean']['merged_mean']:.1%} ({Dm:+.1f} ± {sem:.1f} points: "
               f"{'a difference' if abs(Dm) > 2 * sem else 'within noise'}).")
    cp = results["compression"]
    kept = [r for r in cp["rows"] if points(r["accuracy"], r["original_accuracy"]) >= -1.0]
    if kept:
        r = max(kept, key=lambda r: r["ratio"])
        out.append(f"Compression of the {cp['subzoo']} zoo: {r['ratio']:.1f}x smaller at rank {r['rank']} "
                   f"(relative ΔW error {r['mean_relative_error']:.2f}); adapters exported back to PEFT and reloaded "
                   f"keep their accuracy within 1 point ({r['accuracy']:.1%} vs {r['original_accuracy']:.1%} on "
                   f"{r['exported']} tasks; the base model with the same readouts: {r['base_accuracy']:.1%}). "
                   f"Lossless (every direction) the file is {1 / cp['lossless_ratio']:.1f}x the adapters' size, worst relative error "
                   f"{cp['lossless_worst_error']:.1e}.")
    else:
        r = max(cp["rows"], key=lambda r: r["rank"])
        out.append(f"Compression of the {cp['subzoo']} zoo loses accuracy at every rank tried: at rank {r['rank']} "
                   f"({r['ratio']:.1f}x) exported adapters give {r['accuracy']:.1%} vs {r['original_accuracy']:.1%}.")
    pj = {r["method"]: r for r in results["projection"]}
    out.append(f"Fine-tuning query/value on a held-out task with updates kept in the own-init zoo's subspace: "
               f"{pj['projected']['accuracy']:.1%} vs {pj['unprojected']['accuracy']:.1%} unprojected and "
               f"{pj['complement']['accuracy']:.1%} in the complement; an unprojected run puts "
               f"{pj['unprojected']['update_energy']:.1%} of its update energy in the subspace "
               f"({results['projection_chance']:.1%} for a random subspace of that size).")
    return out


def spectra_plot(folder: Path, reports: Dict, rank: int) -> str:
    """Explained-variance ratio per component, log scale: each module's own curve (never averaged),
    only components above the rounding floor (no zero eigenvalues on the log axis), the
    Marchenko–Pastur expectation of a Gaussian stack of the same shape dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("A", "in", "lora_A, mode in (384)"), ("B", "out", "lora_B, mode out (384)"),
              ("ΔW", "delta", "ΔW = s·B·A, model axis")]
    subzoos = list(reports)
    fig, axes = plt.subplots(len(subzoos), len(panels), figsize=(11, 3.1 * len(subzoos)), squeeze=False)
    for i, s in enumerate(subzoos):
        for j, (factor, mode, title) in enumerate(panels):
            ax = axes[i][j]
            lo = 1.0
            null_drawn = False
            for slot, e in reports[s]["slots"].items():
                if (factor == "ΔW") != slot.endswith(".delta"):
                    continue
                if factor != "ΔW" and f".lora_{factor}." not in slot:
                    continue
                m = e["modes"].get(mode)
                if m is None:
                    continue
                evr = [v for v in m["explained_variance_ratio"] if v > 1e-10]
                if not evr:
                    continue
                lo = min(lo, min(evr))
                ax.plot(range(1, len(evr) + 1), evr, color="C0", alpha=0.45, lw=1)
                if not null_drawn:
                    mp = m["null"]["marchenko_pastur_eigenvalues"]
                    tot = sum(mp)
                    mpr = [v / tot for v in mp if tot > 0 and v / tot > 1e-10]
                    if mpr:
                        lo = min(lo, min(mpr))
                        ax.plot(range(1, len(mpr) + 1), mpr, "k--", lw=1.2)
                    null_drawn = True
            ax.set_yscale("log")
            ax.set_ylim(lo / 2, 1.0)
            ax.set_xlabel("component")
            if j == 0:
                ax.set_ylabel(f"{s}\nexplained variance ratio")
            ax.set_title(title, fontsize=9)
    from matplotlib.lines import Line2D
    fig.legend([Line2D([], [], color="C0", alpha=0.6), Line2D([], [], color="k", ls="--")],
               ["one module each (6 layers × query, value)", "Marchenko–Pastur null, same shape and variance"],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    name = "spectra.png"
    with atomic_path(folder / name) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return name


def cumulative_plot(folder: Path, summary: List[Dict]) -> str:
    """Per sub-zoo and factor: r(0.9) against the Gaussian null's, and the split halves' agreement."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [g for g in summary if g["dim"] > 8 or g["factor"] == "ΔW"]
    labels = [f"{g['subzoo']}\n{g['where']}" for g in rows]
    x = list(range(len(rows)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    a1.bar([v - 0.2 for v in x], [g["r90"] / g["dim"] for g in rows], 0.4, label="zoo")
    a1.bar([v + 0.2 for v in x], [g["null_r90"] / g["dim"] for g in rows], 0.4, label="Gaussian null")
    a1.set_ylabel("r(0.9) / dimension")
    a2.bar(x, [g["split_half_mean_cos2"] for g in rows], 0.5, color="C2")
    a2.axhline(STABLE, color="k", ls=":", lw=1)
    a2.set_ylim(0, 1)
    a2.set_ylabel("split halves: mean cos²")
    for ax in (a1, a2):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
    a1.legend(loc="upper left", bbox_to_anchor=(0, -0.28), ncol=2, fontsize=8, frameon=False)
    return save_figure(fig, folder, "rank-and-stability.png", dpi=110)


def held_out_plot(folder: Path, rows: List[Dict]) -> str:
    """Accuracy against trainable parameters (log axis; the head-only run at its 0 LoRA numbers is
    drawn at 1), one marker per method and task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    marks = "os^vD"
    for i, m in enumerate(methods):
        rs = [r for r in rows if r["method"] == m]
        shift = 1.12 ** (i - (len(methods) - 1) / 2)  # methods with equal counts side by side, not on top
        ax.scatter([max(1, r["trainable"]) * shift for r in rs], [r["accuracy"] for r in rs],
                   marker=marks[i % len(marks)], label=m, s=40)
    ax.set_xscale("log")
    ax.set_xlabel("trainable numbers (no adapter drawn at 1; equal counts drawn side by side)")
    ax.set_ylabel("held-out test accuracy")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return save_figure(fig, folder, "held-out.png", dpi=110)


def tracker_plot(folder: Path, runs: List[Dict], every: int) -> str:
    """The ConvergenceTracker's share of the update (W − W₀) in the subspace, per tracked step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for r in runs:
        ys = [row.get("mean/update_energy", float("nan")) for row in r["log"]]
        ax.plot([every * (i + 1) for i in range(len(ys))], ys, "o-", ms=3, label=f"{r['method']} ({r['accuracy']:.1%})")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("update energy in the subspace")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False, title="updates (accuracy)",
              title_fontsize=8)
    return save_figure(fig, folder, "tracker.png", dpi=110)


def markdown(results: Dict, plots: List[str]) -> str:
    z = results["zoo"]
    L = ["# unisub demo report: LoRA adapters on all-MiniLM-L6-v2", "",
         f"Zoo: {z['tasks']} text-classification tasks (which half of scikit-learn's dataset descriptions an "
         f"{z['words']}-word snippet comes from), each trained as a PEFT LoRA adapter (r = {z['rank']}, alpha "
         f"{z['alpha']}, on {', '.join(z['targets'])}; {z['steps']} steps of {z['batch']}) twice: once with every "
         f"adapter starting from the same lora_A (shared-init), once with its own (own-init). {z['held_out']} tasks "
         f"held out. Trained in this run or read from its cache (`{results['cache']}`); every number below was "
         f"computed by this run. Load during the run: {results['load']}.", "", "## Verdicts", ""]
    L += [f"- {v}" for v in results["verdicts"]]
    L += ["", "## 1. Spectra against the nulls (means over the 12 modules of each group)", "",
          "| zoo | factor [mode] | dim | models | r(0.9) | null r(0.9) | EV at r | null EV at r | gain (points) | "
          "above MP edge | mean share | split-half max sin | split-half mean cos² |", "|" + "---|" * 13]
    for g in results["spectra_summary"]:
        L.append(f"| {g['subzoo']} | {g['where']} | {g['dim']} | {g['models']} | {g['r90']:.1f} | {g['null_r90']:.1f} | "
                 f"{g['ev_at_r']:.3f} | {g['null_ev_at_r']:.3f} | {g['gain_points']:+.1f} | {g['above_mp_edge']:.1f} | "
                 f"{g['mean_share']:.3f} | {g['split_half_max_sin']:.3f} | {g['split_half_mean_cos2']:.3f} |")
    L += ["", "Per-slot numbers: `report.json` (`spectra`) and `analysis/<zoo>/report.json` (the analysis job's own "
          "report). The modes of dimension r (A [out], B [in]) are listed for completeness: with r = "
          f"{z['rank']} they cannot be low-dimensional.", "",
          "## 2. Shared initialisation (the critics' question)", "",
          "| zoo | A energy in its initial row space | in an unrelated init's | chance (r/in) | ‖A − A₀‖/‖A₀‖ | "
          "change's energy in the initial rows |", "|---|---|---|---|---|---|"]
    for s, v in results["initialisation"].items():
        L.append(f"| {s} | {v['A_energy_in_own_init_rows']:.3f} | {v['A_energy_in_unrelated_init_rows']:.3f} | "
                 f"{v['chance']:.3f} | {v['relative_change']:.3f} | {v['change_energy_in_init_rows']:.3f} |")
    L += ["", "## 3. Held-out tasks: training in the subspace", "",
          "Every method trains for the same steps; the subspace runs at lr·√(384/k), so that their factors move "
          "about as far per Adam step as LoRA's (the universal and random subspaces share that lr); the readout is "
          + ("trained along." if z["train_head"] else "fixed (not trained): the 'no adapter' row is MiniLM with it."), "",
          "| task | method | accuracy | trainable numbers | lr | ms/step |", "|---|---|---|---|---|---|"]
    for r in results["held_out"]:
        L.append(f"| {r['task']} | {r['method']} | {r['accuracy']:.3f} | {r['trainable']:,} | {r['lr']:.3g} | "
                 f"{r['ms_per_step']:.0f}"
                 f"{' (cached run)' if r['cached'] else ''} |")
    mg = results["merging"]
    L += ["", f"## 4. Merging {mg['adapters merged']} {mg['subzoo']} adapters (each task keeps its readout)", "",
          f"Tasks {mg['tasks'][:mg['adapters merged']]} are merged; the others show what the merge does to tasks it "
          f"did not include.", "",
          "| method | mean on merged tasks | mean on the other tasks | per task |", "|---|---|---|---|"]
    for k, v in mg["methods"].items():
        others = "—" if v["others_mean"] is None else f"{v['others_mean']:.3f}"
        L.append(f"| {k} | {v['merged_mean']:.3f} | {others} | {' '.join(f'{a:.2f}' for a in v['per_task'])} |")
    own = results["adapter_accuracy"].get(mg["subzoo"], [])
    others_own = f"{sum(own[mg['adapters merged']:]) / len(own[mg['adapters merged']:]):.3f}" \
        if len(own) > mg["adapters merged"] else "—"
    L.append(f"| each adapter on its own task | {mg['each adapter on its own task']['merged_mean']:.3f} | {others_own} | "
             f"{' '.join(f'{a:.2f}' for a in own)} |")
    base = results["adapter_accuracy"]["base_with_heads"][mg["subzoo"]]
    L.append(f"| base model with each task's readout | {mg['base_merged_mean']:.3f} | "
             f"{sum(base[mg['adapters merged']:]) / max(1, len(base) - mg['adapters merged']):.3f} | "
             f"{' '.join(f'{a:.2f}' for a in base)} |")
    cp = results["compression"]
    L += ["", f"## 5. Compression of the {cp['subzoo']} zoo, exported back to PEFT and reloaded", "",
          "| rank per module | ratio | bytes | relative ΔW error | exported | accuracy | originals | base model, same readouts |",
          "|---|---|---|---|---|---|---|---|"]
    for r in cp["rows"]:
        L.append(f"| {r['rank']} | {r['ratio']:.1f} | {r['bytes']:,} | {r['mean_relative_error']:.3f} | {r['exported']} | "
                 f"{r['accuracy']:.3f} | {r['original_accuracy']:.3f} | {r['base_accuracy']:.3f} |")
    L += ["", "## 6. Projected fine-tuning (query/value weights), ConvergenceTracker on", "",
          "| updates | accuracy | update energy in S | gradient energy in S | max angle (rad) | ms/step |",
          "|---|---|---|---|---|---|"]
    for r in results["projection"]:
        L.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['update_energy']:.3f} | {r['grad_energy']:.3f} | "
                 f"{r['max_angle_rad']:.2f} | {r['ms_per_step']:.0f}{' (cached run)' if r['cached'] else ''} |")
    L += ["", "## Timings", "", f"Total {results['seconds']:.0f} s; zoo training {results['zoo_training_seconds']:.0f} s "
          f"(0: read from the cache). Stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["stage_seconds"].items()) + "."]
    if plots:
        L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(L) + "\n"


def strict(x):
    """NaN / infinity -> None, so that report.json is RFC 8259 JSON (as the analysis job's)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    return x


def write(folder: Path, results: Dict, plots: List[str]) -> None:
    with atomic_path(folder / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(strict(results), indent=2, ensure_ascii=False, allow_nan=False))
    with atomic_path(folder / "report.md") as tmp:
        Path(tmp).write_text(markdown(results, plots))


__all__ = ["verdicts", "markdown", "write", "spectra_plot", "cumulative_plot", "held_out_plot", "table"]
