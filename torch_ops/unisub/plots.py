"""Scree and cumulative explained-variance plots, each with its matched nulls beside it."""
from pathlib import Path

import numpy as np


def _curves(mode_rep):
    ev = np.asarray(mode_rep["explained_variance_ratio"])
    total = 1.0
    mp = np.asarray(mode_rep["null"]["marchenko_pastur_eigenvalues"])
    # LoRA deltas: the null with the observed per-model norms (mean over its draws) replaces the
    # equal-norm Gaussian sample, since that is the null the report counts against
    ga = np.asarray(mode_rep["null"].get("norm_matched_mean_eigenvalues", mode_rep["null"]["gaussian_stack_eigenvalues"]))
    mp = mp / mp.sum() if mp.sum() > 0 else mp
    ga = ga / ga.sum() if ga.sum() > 0 else ga
    return ev * total, mp, ga


def _null_label(mode_rep):
    return "per-model-norm null" if "norm_matched_mean_eigenvalues" in mode_rep["null"] else "Gaussian stack"


def _draw(axes, ev, mp, ga, title, rank=None, null_label="Gaussian stack"):
    k = np.arange(1, len(ev) + 1)
    ax = axes[0]
    ax.semilogy(k, np.maximum(ev, 1e-300), ".-", label="models", ms=3)
    ax.semilogy(k, np.maximum(mp, 1e-300), "--", label="Marchenko–Pastur")
    ax.semilogy(k, np.maximum(ga, 1e-300), ":", label=null_label)
    ax.set(title=f"{title}: scree", xlabel="component", ylabel="explained variance ratio")
    ax.set_ylim(bottom=max(1e-8, min(ev[ev > 0].min() if (ev > 0).any() else 1e-8, 1e-3) / 2))
    ax = axes[1]
    ax.plot(k, np.cumsum(ev), ".-", label="models", ms=3)
    ax.plot(k, np.cumsum(mp), "--", label="Marchenko–Pastur")
    ax.plot(k, np.cumsum(ga), ":", label=null_label)
    if rank:
        ax.axvline(rank, color="grey", lw=0.8)
    ax.set(title=f"{title}: cumulative", xlabel="components", ylabel="cumulative explained variance", ylim=(0, 1.02))
    for a in axes:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)


def save_figure(fig, folder, name: str, dpi: int = 90) -> str:
    """``fig`` laid out and written as ``folder/name`` (PNG, atomically), then closed; returns name."""
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig.tight_layout()
    with atomic_path(Path(folder) / name) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return name


def plot_report(report, folder, progress=True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from .analysis import slot_file_stem
    from .io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def save(fig, name):
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)

    slots = report["slots"]
    for key, rep in tqdm(slots.items(), disable=not progress, desc="plots", unit="slot"):
        modes = list(rep["modes"])
        fig, axes = plt.subplots(len(modes), 2, figsize=(10, 3.6 * len(modes)), squeeze=False)
        for row, m in zip(axes, modes):
            _draw(row, *_curves(rep["modes"][m]), f"{key} [{m}]", rep["modes"][m]["rank"], _null_label(rep["modes"][m]))
        fig.tight_layout()
        save(fig, f"{slot_file_stem(key)}.png")
    # Averaged over slots: curves padded to the longest (scree with 0, cumulative with 1).
    modes = sorted({m for r in slots.values() for m in r["modes"]})
    if not modes:
        return
    fig, axes = plt.subplots(len(modes), 2, figsize=(10, 3.6 * len(modes)), squeeze=False)
    for row, m in zip(axes, modes):
        curves = [_curves(r["modes"][m]) for r in slots.values() if m in r["modes"]]
        n = max(len(c[0]) for c in curves)
        mean = [np.mean([np.pad(c[j], (0, n - len(c[j]))) for c in curves], axis=0) for j in range(3)]
        labels = {_null_label(r["modes"][m]) for r in slots.values() if m in r["modes"]}
        _draw(row, *mean, f"mean over {len(curves)} slots [{m}]", null_label=" / ".join(sorted(labels)))
    fig.tight_layout()
    save(fig, "mean_over_slots.png")
