"""``unisub demo``: the paper's claims, and its critics', tested on a zoo trained here.

Default (``zoo="minilm"``): a zoo of real PEFT LoRA adapters on all-MiniLM-L6-v2 (``demo.minilm``),
trained twice — every adapter from one shared lora_A initialisation, and each from its own — and
analysed with ``unisub.analyze`` (modes out, in and the model axis of ΔW = s·B·A) against matched
nulls with split-half stability; then held-out tasks trained inside the zoo's subspace vs plain
LoRA vs a random subspace, merging (mean, task arithmetic, TIES, DARE, subspace), compression with
export back to PEFT, and projected fine-tuning under the ConvergenceTracker (``lora_experiments``).

``zoo="digits"``: the original zoo of small MLPs on scikit-learn's digits (``demo.zoo``): (a)
reconstructs unseen models from the subspace, (b) trains only coefficients vs full training vs
LoRA, (c) merges models, (d) fine-tunes with projected gradients under the convergence tracker,
(e) compresses the zoo.

Both print tables and verdicts computed from the run's numbers and write ``report.json`` and
``report.md`` (with plots) to the output folder.
"""
import json
import time
from dataclasses import asdict
from typing import Optional

import torch

from ..analysis import analyze
from . import experiments as ex
from .outdir import DemoError, prepare_out  # noqa: F401  (DemoError: what a bad --out / --cache raises)
from .report import plot_reconstruction, spectrum_rows, table, verdicts, write
from .zoo import LAYERS, ZooConfig, build_zoo

QUICK = ZooConfig(finetuned=10, scratch=6, held_out=2, pretrain_steps=300, finetune_steps=80, scratch_steps=200)
ZOOS = ("minilm", "digits")


def run_demo(out: Optional[str] = None, quick: bool = False, seed: int = 0, cache: Optional[str] = None,
             tasks: str = "partition", log=print, zoo: str = "minilm", config=None) -> dict:
    """Run the demo on the ``zoo`` ("minilm": PEFT LoRA adapters on all-MiniLM-L6-v2, the default;
    "digits": MLPs on scikit-learn's digits). ``config``: a ``MiniLMConfig`` / ``ZooConfig``
    overriding ``quick`` (tests use tiny ones)."""
    if zoo not in ZOOS:
        raise ValueError(f"unknown zoo {zoo!r}; expected one of {ZOOS}")
    if zoo == "minilm":
        from .run_minilm import run_minilm

        return run_minilm(out=out, quick=quick, seed=seed, cache=cache, log=log, config=config)
    config = config or (QUICK if quick else ZooConfig())
    config = ZooConfig(**{**asdict(config), "seed": seed, "tasks": tasks})
    out = prepare_out(out or "unisub-demo", cache, ("analysis",))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the models are tiny: on 2 cores one thread is the fastest
    start = time.perf_counter()
    try:
        return _run(config, out, cache, log, start)
    finally:
        torch.set_num_threads(threads)


def _section(log, title):
    log("")
    log(title)
    log("=" * len(title))


def _run(config, out, cache, log, start):
    log(f"unisub demo: a zoo of MLPs on scikit-learn's digits (seed {config.seed}); report folder {out.resolve()}")
    zoo = build_zoo(config, cache, log)
    rank = 16 if config.hidden >= 32 else 4
    steps, lr = config.finetune_steps, config.lr

    _section(log, "Spectra of each layer against a matched Gaussian null (unisub.analyze)")
    spectra = []
    for name, paths in (("finetuned", zoo.finetuned), ("scratch", zoo.scratch)):
        folder = out / "analysis" / name  # cleared by prepare_out: no earlier run's files
        analyze([str(p) for p in paths], slots=list(LAYERS), energy=0.9, out=folder, progress=False)
        spectra += spectrum_rows(json.loads((folder / "report.json").read_text()), name)
    log(table([{**r, "where": f"{r['zoo']} {r['slot']} [{r['mode']}]"} for r in spectra],
              [("where", "zoo, slot [mode]", "s"), ("dim", "dim", "d"), ("r90", "r(0.9)", "d"),
               ("ev_at_r", "EV@r", ".3f"), ("null_ev_at_r", "null EV@r", ".3f"),
               ("above_mp_edge", "above MP edge", "d"), ("mean_share", "mean share", ".3f"),
               ("split_half_max_sin", "split-half sin", ".3f")]))

    subspaces = ex.fit_subspaces(zoo, zoo.finetuned)
    ranks = [k for k in (1, 2, 4, 8, 16, 32) if k <= config.hidden and k < len(zoo.finetuned)]
    _section(log, "(a) Unseen fine-tuned models projected onto the subspace (accuracy on their own task)")
    rec = ex.reconstruction(zoo, subspaces, ranks)
    log(table([{"k": k, "acc": v} for k, v in rec.items()], [("k", "k", "s"), ("acc", "accuracy", ".3f")]))

    task = zoo.held_out_tasks[0]
    _section(log, f"(b) Learning held-out task {task} from the base model ({steps} steps, rank {rank})")
    training = ex.training(zoo, subspaces, rank, task, steps, lr)
    log(table(training, [("method", "method", "s"), ("accuracy", "accuracy", ".3f"),
                         ("trainable", "trainable", ",d"), ("ms_per_step", "ms/step", ".2f")]))

    count = min(8, len(zoo.finetuned))
    _section(log, f"(c) Merging the backbones of {count} fine-tuned models (each task keeps its head)")
    merging = ex.merging(zoo, count, rank)
    log(table([{"method": k, **v} for k, v in merging.items()],
              [("method", "method", "s"), ("mean_accuracy", "mean acc", ".3f"), ("min_accuracy", "min acc", ".3f")]))

    _section(log, f"(d) Projected fine-tuning on held-out task {task}, ConvergenceTracker on")
    projection = ex.projection(zoo, subspaces, rank, task, steps, lr, log_dir=out)
    log(table(projection, [("method", "gradients", "s"), ("accuracy", "accuracy", ".3f"),
                           ("update_energy", "update in S", ".3f"), ("grad_energy", "grad in S", ".3f"),
                           ("max_angle_rad", "angle (rad)", ".2f"), ("ms_per_step", "ms/step", ".2f")]))

    _section(log, "(e) The analysed zoo stored as mean + bases + coefficients")
    compression = ex.compression(zoo, [k for k in (2, 4, 8, 16) if k <= config.hidden])
    log(table(compression, [("rank", "rank", "d"), ("ratio", "ratio", ".1f"), ("bytes", "bytes", ",d"),
                            ("accuracy", "accuracy", ".3f"), ("original_accuracy", "originals", ".3f")]))

    results = {"zoo": asdict(config), "spectra": spectra, "reconstruction": rec, "training": training,
               "merging": merging, "projection": projection, "compression": compression,
               "seconds": time.perf_counter() - start, "zoo_training_seconds": zoo.seconds}
    results["verdicts"] = verdicts(results)
    _section(log, "Verdicts (from the numbers above)")
    for v in results["verdicts"]:
        log(f"- {v}")
    plots = [plot_reconstruction(out, rec)]
    plots += [str(p.relative_to(out)) for p in sorted((out / "analysis" / "finetuned" / "plots").glob("*.png"))]
    plots += [str(p.relative_to(out)) for p in sorted((out / "analysis" / "scratch" / "plots").glob("*.png"))]
    write(out, results, plots)
    log(f"\nreport: {(out / 'report.md').resolve()} (and report.json); finished in {results['seconds']:.0f} s")
    return results
