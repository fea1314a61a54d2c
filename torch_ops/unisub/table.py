"""The terminal view of a report (``unisub analyze`` prints it, ``unisub inspect`` reprints it)."""


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _above_null(null):
    """Components above the slot's null (the norm-matched one for LoRA deltas; reports written
    before the count had its own field give the Marchenko–Pastur count)."""
    return null.get("components_above_null", null["components_above_mp_edge"])


def _null_kinds(report, mode):
    kinds = sorted({mr["null"].get("kind", "equal-norm Marchenko-Pastur") for rep in report["slots"].values()
                    for mo, mr in rep["modes"].items() if mo == mode})
    return ", ".join(kinds)


def format_report(report, tau="0.9") -> str:
    lines = [f"{report['models']} models, {len(report['slots'])} slots, modes {', '.join(report['options']['modes'])}, "
             f"energy {report['options']['energy']}, rank {report['options']['rank']}"]
    head = (f"{'slot':<48} {'shape':>11} {'mode':>5} {'r':>5} {'r(' + tau + ')':>7} {'EVR1':>6} "
            f"{'>null':>5} {'split sinmax':>12} {'mean%':>6} {'ratio':>7}")
    lines += [head, "-" * len(head)]
    for key, rep in report["slots"].items():
        for j, (m, mr) in enumerate(rep["modes"].items()):
            name = key if len(key) <= 48 else "…" + key[-47:]
            sh = mr["split_half"]
            first = j == 0
            shape = "x".join(map(str, rep["shape"])) if first else ""
            mean_pct = f"{100 * rep['energy']['mean_share']:.1f}" if first else ""
            ratio = f"{rep['compression']['ratio']:.2f}" if first else ""
            lines.append(
                f"{name if first else '':<48} {shape:>11} {m:>5} {mr['rank']:>5} "
                f"{mr['rank_at_tau'].get(tau, '-'):>7} {mr['explained_variance_ratio'][0]:>6.3f} "
                f"{_above_null(mr['null']):>5} {_fmt(sh and sh['max_sin'], '.3f'):>12} "
                f"{mean_pct:>6} {ratio:>7}")
    s = report.get("summary", {})
    for m in report["options"]["modes"]:
        if m in s:
            lines.append(f"mean over slots [{m}]: rank {s[m]['mean_rank']:.1f} ({100 * s[m]['mean_rank_fraction']:.1f}% of dim), "
                         f"{s[m].get('mean_components_above_null', s[m]['mean_components_above_mp_edge']):.1f} "
                         f"components above the null ({_null_kinds(report, m)}), "
                         f"split-half max sin {s[m]['mean_split_half_max_sin']:.3f}")
    if "mean_energy_share_of_mean" in s:
        lines.append(f"the mean holds {100 * s['mean_energy_share_of_mean']:.1f}% of the weights' energy on average; "
                     f"mean compression ratio {s['mean_compression_ratio']:.2f}")
    if report.get("skipped"):
        lines.append(f"skipped {len(report['skipped'])} tensors (e.g. {next(iter(report['skipped']))}: "
                     f"{next(iter(report['skipped'].values()))})")
    return "\n".join(lines)
