"""``unisub demo`` on the MiniLM LoRA zoo: the stages in the report's order, with progress lines."""
import dataclasses
import os
import time
from pathlib import Path
from typing import Optional

import torch

from . import lora_experiments as ex
from . import lora_report as rp
from . import minilm as ml
from .outdir import prepare_out
from .report import table

QUICK = ml.MiniLMConfig(tasks=6, held_out=1, steps=25)


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            one, five, fifteen = f.read().split()[:3]
        return f"load average {one} / {five} / {fifteen} (1 / 5 / 15 min) on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def _section(log, title):
    log("")
    log(title)
    log("=" * len(title))


def run_minilm(out: Optional[str] = None, quick: bool = False, seed: int = 0, cache=None, log=print,
               config: Optional[ml.MiniLMConfig] = None) -> dict:
    c = config or (QUICK if quick else ml.MiniLMConfig())
    c = dataclasses.replace(c, seed=seed) if config is None else c
    # before the (long) zoo: a bad --out or --cache is refused, and only the demo's own
    # subfolders of a previous run are removed
    out = prepare_out(out or "unisub-demo", cache, ("analysis", "merged", "exported"))
    threads = torch.get_num_threads()
    # MiniLM at 16 tokens and batch 16 is small: on a 2-core machine one thread per process was
    # the fastest (two threads lost to the other work on the machine, and to LAPACK's own threads).
    torch.set_num_threads(1)
    try:
        return _run(c, out, cache, log)
    finally:
        torch.set_num_threads(threads)


def _run(c: ml.MiniLMConfig, out: Path, cache, log) -> dict:
    start = time.perf_counter()
    load_start = _load()
    stages = {}
    mark = [time.perf_counter()]

    def stage(name):
        now = time.perf_counter()
        stages[name] = now - mark[0]
        mark[0] = now

    log(f"unisub demo: PEFT LoRA adapters on all-MiniLM-L6-v2 (seed {c.seed}); report folder {out.resolve()}")
    log(f"unisub demo: {load_start}")
    zoo = ml.build_zoo(c, cache, log)
    stage("zoo")
    k = min(16, c.tasks * c.rank)  # the subspace rank used for training, merging and projection

    _section(log, "1. Spectra of lora_A, lora_B and ΔW against matched nulls (unisub.analyze)")
    an = ex.analysis(zoo, out, log)
    summary = ex.summarise(an["rows"])
    log(table(summary, [("subzoo", "zoo", "s"), ("where", "factor [mode]", "s"), ("dim", "dim", "d"),
                        ("r90", "r(0.9)", ".1f"), ("null_r90", "null r(0.9)", ".1f"), ("gain_points", "gain (pts)", "+.1f"),
                        ("above_mp_edge", "above MP", ".1f"), ("mean_share", "mean share", ".3f"),
                        ("split_half_mean_cos2", "halves cos²", ".3f")]))
    stage("analysis")

    _section(log, "2. How much of the shared A subspace is the shared initialisation?")
    init = ex.initialisation(zoo, log)
    stage("initialisation")

    _section(log, "Each adapter on its own task (the reference for what follows)")
    merge_zoo = "own-init"  # merged and compressed below; every one of its adapters is evaluated
    accs = ex.adapter_accuracies(zoo, merge_zoo, 3, log)
    stage("adapters")

    _section(log, f"3. Held-out tasks {zoo.held_out_tasks}: training inside a rank-{k} subspace vs LoRA vs random")
    held = ex.held_out(zoo, k, log)
    stage("held-out")

    count = min(4, c.tasks)
    _section(log, f"4. Merging {count} {merge_zoo} adapters, evaluated on every task of the zoo")
    merging = ex.merging(zoo, merge_zoo, count, k, out, accs[merge_zoo], log)
    base = accs["base_with_heads"][merge_zoo]
    merging["base_merged_mean"] = sum(base[:count]) / count
    stage("merging")

    _section(log, f"5. Compression of the {merge_zoo} zoo; adapters exported back to PEFT and reloaded")
    ranks = [r for r in (4, 8, 16) if r <= c.tasks * c.rank]
    comp = ex.compression(zoo, merge_zoo, ranks, min(3, c.tasks), out, accs[merge_zoo], log)
    for r in comp["rows"]:  # what the evaluated tasks' heads give on the base model: the adapters' gain
        r["base_accuracy"] = sum(base[:r["exported"]]) / r["exported"]
    stage("compression")

    _section(log, f"6. Projected fine-tuning on held-out task {zoo.held_out_tasks[0]}, ConvergenceTracker on")
    proj = ex.projection(zoo, k, out, log)
    stage("projection")

    results = {"zoo": dataclasses.asdict(c), "cache": str(zoo.root), "subspace_rank": k,
               "test_snippets": len(ml.config_corpus(c).test),
               "spectra_summary": summary, "spectra": an["rows"], "initialisation": init,
               "adapter_accuracy": accs, "held_out": held, "merging": merging, "compression": comp,
               "projection": proj, "projection_chance": (k / ml.HIDDEN) ** 2,
               "zoo_training_seconds": zoo.seconds}
    results["verdicts"] = rp.verdicts(results)
    _section(log, "Verdicts (from the numbers above)")
    for v in results["verdicts"]:
        log(f"- {v}")
    plots = [rp.spectra_plot(out, an["reports"], c.rank), rp.cumulative_plot(out, summary),
             rp.held_out_plot(out, held), rp.tracker_plot(out, proj, max(1, c.steps // 8))]
    stage("report")
    results["load"] = f"at the start {load_start}; at the end {_load()}"
    results["stage_seconds"] = stages
    results["seconds"] = time.perf_counter() - start
    rp.write(out, results, plots)
    log(f"\nreport: {(out / 'report.md').resolve()} (and report.json); finished in {results['seconds']:.0f} s "
        f"({_load()})")
    return results
