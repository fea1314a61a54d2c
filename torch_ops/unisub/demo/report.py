"""The demo's verdicts (computed from the numbers, never written in advance), terminal tables,
and the report folder (report.json, report.md with plots)."""
import json
from pathlib import Path
from typing import Dict, List

from ..plots import save_figure
from ..io import atomic_path


def spectrum_rows(report: Dict, zoo_name: str) -> List[Dict]:
    rows = []
    for slot, rep in report["slots"].items():
        for mode, m in rep["modes"].items():
            null = m["null"]
            rows.append({"zoo": zoo_name, "slot": slot, "mode": mode, "dim": m["dim"],
                         "r90": m["rank_at_tau"]["0.9"], "ev_at_r": m["cumulative_explained_variance"][m["rank"] - 1],
                         "null_ev_at_r": null["gaussian_stack_cumulative_at_rank"],
                         "above_mp_edge": null["components_above_mp_edge"],
                         "mean_share": rep["energy"]["mean_share"], "split_half_max_sin": m["split_half"]["max_sin"]})
    return rows


def verdicts(results: Dict) -> List[str]:
    """Plain statements of where the subspace helped and where it did not, from this run's numbers."""
    out = []
    spec = results["spectra"]
    for zoo in ("finetuned", "scratch"):
        rows = [r for r in spec if r["zoo"] == zoo]
        gain = sum(r["ev_at_r"] - r["null_ev_at_r"] for r in rows) / len(rows)
        above = sum(r["above_mp_edge"] for r in rows) / len(rows)
        frac = sum(r["r90"] / r["dim"] for r in rows) / len(rows)
        facts = (f"on average {above:.1f} components per layer and mode stand above the Marchenko–Pastur edge, "
                 f"and the top r(0.9) = {frac:.0%} of the dimensions explain {gain:+.0%} more variance than the same "
                 f"number of a Gaussian null's")
        if above >= 1 and gain > 0.2 and frac < 0.5:
            out.append(f"{zoo} zoo: a shared low-dimensional subspace — {facts}.")
        elif above >= 1 and gain > 0.05:
            out.append(f"{zoo} zoo: weak shared structure, not a low-dimensional subspace — {facts}.")
        else:
            out.append(f"{zoo} zoo: NO subspace beyond the null — {facts}. What is shared here is at most the mean.")
    share = sum(r["mean_share"] for r in spec if r["zoo"] == "finetuned") / max(1, sum(r["zoo"] == "finetuned" for r in spec))
    out.append(f"The mean across models carries {share:.0%} of the fine-tuned zoo's weight energy: much of the "
               f"'universality' of a zoo fine-tuned from one model is the shared mean, and the report counts it apart.")
    rec = results["reconstruction"]
    ks = [k for k in rec if k.isdigit()]
    good = [k for k in ks if rec[k] >= rec["original"] - 0.02]
    if good:
        out.append(f"Unseen models projected onto the subspace keep their accuracy (within 2 points of "
                   f"{rec['original']:.1%}) from k = {good[0]} components per mode on; the zoo's mean alone gives "
                   f"{rec['mean_only']:.1%}.")
    else:
        best = max(ks, key=lambda k: rec[k])
        out.append(f"Unseen models projected onto the subspace lose accuracy at every k tried: the best, k = {best}, "
                   f"gives {rec[best]:.1%} against {rec['original']:.1%} (the zoo's mean alone: "
                   f"{rec['mean_only']:.1%}); with this many models the subspace does not capture unseen tasks whole.")
    tr = {r["method"]: r for r in results["training"]}
    uni, rnd, full = tr["coefficients (universal)"], tr["coefficients (random)"], tr["full"]
    verdict = "helped" if uni["accuracy"] > rnd["accuracy"] + 0.02 else "did NOT help"
    out.append(f"Coefficient-only training on a held-out task: {uni['accuracy']:.1%} with {uni['trainable']} "
               f"trainable numbers in the zoo's subspace vs {rnd['accuracy']:.1%} in a random subspace of the same "
               f"size and {full['accuracy']:.1%} for full fine-tuning ({full['trainable']}): the universal subspace "
               f"{verdict} compared with a random one.")
    mg = results["merging"]
    sub = next(v for k, v in mg.items() if k.startswith("subspace (rank"))
    ta = next(v for k, v in mg.items() if k.startswith("task arithmetic"))
    best = max((k for k in mg if "bound" not in k), key=lambda k: mg[k]["mean_accuracy"])
    out.append(f"Merging backbones: best is {best} ({mg[best]['mean_accuracy']:.1%} mean accuracy over tasks); "
               f"subspace merging {sub['mean_accuracy']:.1%} vs task arithmetic {ta['mean_accuracy']:.1%}; the "
               f"centred subspace merge equals the mean merge, as it must.")
    pj = {r["method"]: r for r in results["projection"]}
    out.append(f"Gradients projected onto the subspace: {pj['projected']['accuracy']:.1%} vs "
               f"{pj['unprojected']['accuracy']:.1%} unprojected and {pj['complement']['accuracy']:.1%} in the "
               f"complement; an unprojected run puts {pj['unprojected']['update_energy']:.1%} of its update "
               f"energy in the subspace.")
    best_c = max(results["compression"], key=lambda r: (r["accuracy"] >= r["original_accuracy"] - 0.02, r["ratio"]))
    out.append(f"Compression of the analysed layers: {best_c['ratio']:.1f}x smaller at rank {best_c['rank']} with "
               f"{best_c['accuracy']:.1%} accuracy (originals {best_c['original_accuracy']:.1%}).")
    return out


def table(rows: List[Dict], columns: List[tuple]) -> str:
    """A fixed-width text table; ``columns`` are (key, header, format)."""
    head = "  ".join(f"{h:>{max(len(h), 8)}}" if i else f"{h:<28}" for i, (_, h, _) in enumerate(columns))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for i, (k, h, fmt) in enumerate(columns):
            v = format(r[k], fmt)
            cells.append(f"{v:>{max(len(h), 8)}}" if i else f"{v:<28}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def markdown(results: Dict, plots: List[str]) -> str:
    lines = ["# unisub demo report", "",
             f"Zoo: {results['zoo']['finetuned']} fine-tuned + {results['zoo']['scratch']} from-scratch MLPs "
             f"(64→{results['zoo']['hidden']}→{results['zoo']['hidden']}→10) on scikit-learn's digits, trained in this "
             f"run or read from its cache; every number below was computed by this run.", "", "## Verdicts", ""]
    lines += [f"- {v}" for v in results["verdicts"]]
    lines += ["", "## Spectra against the null", "", "| zoo | slot | mode | dim | r(0.9) | EV at r | null EV at r | above MP edge | mean share | split-half max sin |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["spectra"]:
        lines.append(f"| {r['zoo']} | {r['slot']} | {r['mode']} | {r['dim']} | {r['r90']} | {r['ev_at_r']:.3f} | "
                     f"{r['null_ev_at_r']:.3f} | {r['above_mp_edge']} | {r['mean_share']:.3f} | {r['split_half_max_sin']:.3f} |")
    lines += ["", "## (a) Unseen models reconstructed from the subspace", "", "| k | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results["reconstruction"].items()]
    for title, key, cols in [("(b) Training on a held-out task", "training", ["method", "accuracy", "trainable", "ms_per_step"]),
                             ("(d) Projected fine-tuning, tracker on", "projection",
                              ["method", "accuracy", "update_energy", "grad_energy", "max_angle_rad", "ms_per_step"]),
                             ("(e) Compression", "compression", ["rank", "ratio", "bytes", "original_bytes", "accuracy", "original_accuracy"])]:
        lines += ["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in results[key]:
            lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    lines += ["", "## (c) Merging (backbone merged, each task's own head)", "", "| method | mean accuracy | min accuracy |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean_accuracy']:.3f} | {v['min_accuracy']:.3f} |" for k, v in results["merging"].items()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write(folder: Path, results: Dict, plots: List[str]) -> None:
    with atomic_path(folder / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(results, indent=2))
    with atomic_path(folder / "report.md") as tmp:
        Path(tmp).write_text(markdown(results, plots))


def plot_reconstruction(folder: Path, rec: Dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = [k for k in rec if k.isdigit()]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([int(k) for k in ks], [rec[k] for k in ks], "o-", label="projected onto the subspace (rank k)")
    ax.axhline(rec["original"], color="k", ls="--", label="original models")
    ax.axhline(rec["mean_only"], color="r", ls=":", label="zoo mean only")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (components per mode)")
    ax.set_ylabel("accuracy on own task")
    ax.legend(fontsize=7)
    return save_figure(fig, folder, "reconstruction.png", dpi=90)
