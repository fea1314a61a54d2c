"""``unisub lora compress | export | absorb | merge | inspect``: PEFT LoRA zoos through one
shared subspace (docs/lora.md)."""
import json
import sys


def add_lora_commands(lora) -> None:
    """``unisub lora ...``: PEFT LoRA zoos through one shared subspace (docs/lora.md)."""
    cmds = lora.add_subparsers(dest="lora_command", required=True)

    p = cmds.add_parser("compress", help="PEFT adapter folders -> one zoo file (shared bases + coefficients)")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="PEFT adapter folders, or folders of them")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--rank", type=int, help="components kept per mode and module")
    p.add_argument("--energy", type=float, help="keep the fewest components reaching this fraction of the zoo's "
                   "energy per mode (default 0.99 when --rank is not given either)")
    p.add_argument("--lossless", action="store_true", help="keep every component above rounding (a check)")
    p.add_argument("--dtype", default="float32", help="storage of bases and coefficients (default float32)")
    p.add_argument("--keep-state", action="store_true",
                   help="also store the Grams, so that 'absorb --update-bases' is exact later")
    p.add_argument("--json", metavar="FILE", help="write the report (errors per adapter, storage) as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_compress)

    p = cmds.add_parser("export", help="one adapter of a zoo -> a PEFT adapter folder")
    p.add_argument("zoo", metavar="ZOO.safetensors")
    p.add_argument("adapter", help="the adapter's name (see 'unisub lora inspect') or index")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--dtype", help="of the written factors (default: the adapter's own)")
    p.add_argument("--rank", type=int, help="truncate each module to this rank (default: exact, min(k_out, k_in))")
    p.set_defaults(run=_export)

    p = cmds.add_parser("absorb", help="add a PEFT adapter to a zoo without recompressing it")
    p.add_argument("zoo", metavar="ZOO.safetensors")
    p.add_argument("adapter", metavar="ADAPTER")
    p.add_argument("--name", help="its name in the zoo (default: the folder's name)")
    p.add_argument("--update-bases", action="store_true", help="update the bases too (needs a --keep-state zoo)")
    p.add_argument("--out", metavar="FILE", help="write the enlarged zoo here (default: replace ZOO)")
    p.set_defaults(run=_absorb)

    p = cmds.add_parser("merge", help="PEFT adapters -> one PEFT adapter")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--method", default="mean", choices=["mean", "task_arithmetic", "ties", "dare", "dare_ties",
                                                         "subspace"])
    p.add_argument("--scale", type=float, help="λ (default 1/M; 1 for TIES)")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per adapter (default 1)")
    p.add_argument("--density", type=float, default=0.2, help="TIES: fraction of entries kept (default 0.2)")
    p.add_argument("--drop", type=float, default=0.5, help="DARE: drop probability (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="DARE: seed of the drop masks")
    p.add_argument("--rank", type=int, help="subspace: components per mode")
    p.add_argument("--energy", type=float, default=0.9, help="subspace: energy threshold (default 0.9)")
    p.add_argument("--out-rank", type=int, help="rank of the written adapter (default Σ r_i)")
    p.add_argument("--modules", nargs="+", metavar="PATTERN",
                   help="merge only these modules (globs on the module name, or 're:REGEX')")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(run=_merge)

    p = cmds.add_parser("inspect", help="print a zoo: adapters, errors, ranks, storage")
    p.add_argument("zoo", metavar="ZOO.safetensors")
    p.set_defaults(run=_inspect)


def _fail(cmd, e) -> int:
    print(f"unisub lora {cmd}: error: {e}", file=sys.stderr)
    return 2


def _errors():
    from ..io import CheckpointError

    return (CheckpointError, PermissionError, FileNotFoundError, ValueError, KeyError, IndexError)


def _write_failed(cmd, e) -> int:
    """The output side failed (a full disk, no permission): exit 1, as `unisub analyze` does."""
    print(f"unisub lora {cmd}: error: {e}", file=sys.stderr)
    return 1


def _write_error():
    from ..io import WriteError

    return WriteError


def _unwritable(path, flag):
    """Why the output file ``path`` cannot be written (None when it can): checked before the work,
    so that a mistyped --out does not cost a whole compression."""
    import os
    from pathlib import Path

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{flag} '{path}' is a folder; give a file name"
    if not parent.is_dir():
        return f"{flag} '{path}': the folder '{parent}' does not exist"
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{flag} '{path}' is not writable"
    return None


def _print_report(zoo, file=None):
    file = file or sys.stdout  # looked up per call: a default bound at import outlives a redirected stdout
    st = zoo.storage()
    print(f"{zoo.count} adapters, {len(zoo.modules)} modules; {st['compressed_bytes']} bytes "
          f"(zoo as stored: {st['original_bytes']}; ratio {st['ratio']:.2f})"
          + (f"; absorb state {st['state_bytes']} bytes" if st["state_bytes"] else ""), file=file)
    print(f"the mean's share of the reconstructed energy: {zoo.mean_share():.3f} (1/M = {1 / zoo.count:.3f})", file=file)
    ranks = sorted({mb.ranks for mb in zoo.modules.values()})
    print(f"ranks (out, in) per module: {', '.join(map(str, ranks[:8]))}{' ...' if len(ranks) > 8 else ''}", file=file)
    bounds = set(zoo.options.get("residual_bounds", []))
    print(f"{'adapter':<40} {'rel. error':>11} {'worst module':>14}  module", file=file)
    for e in zoo.errors():
        mark = " (bound)" if e["name"] in bounds else ""
        print(f"{e['name'][:40]:<40} {e['relative_error']:>11.3e} {e['worst_module_error']:>14.3e}  "
              f"{e['worst_module']}{mark}", file=file)


def _compress(args) -> int:
    from .compress import compress
    from .peft_out import dtype_of

    energy = args.energy
    if args.lossless:
        if args.rank is not None or energy is not None:
            return _fail("compress", "--lossless excludes --rank and --energy")
    elif args.rank is None and energy is None:
        energy = 0.99
    for path, flag in ((args.out, "--out"), (args.json, "--json")):
        why = path and _unwritable(path, flag)
        if why:
            return _fail("compress", why)
    try:
        zoo = compress(args.adapters, rank=args.rank, energy=energy, dtype=dtype_of(args.dtype),
                       keep_state=args.keep_state, progress=not args.quiet)
        zoo.save(args.out)
        if args.json:
            from ..io import write_json

            write_json(args.json, zoo.report())
    except _write_error() as e:
        return _write_failed("compress", e)
    except _errors() as e:
        return _fail("compress", e)
    if not args.quiet:
        _print_report(zoo)
        print(f"written to {args.out}")
    return 0


def _load(path):
    from .zoo import LoraZoo

    return LoraZoo.load(path)


def _export(args) -> int:
    from .export import export

    try:
        zoo = _load(args.zoo)
        which = int(args.adapter) if args.adapter.lstrip("-").isdigit() and args.adapter not in zoo.names else args.adapter
        rep = export(zoo, which, args.out, dtype=args.dtype, rank=args.rank)
    except _write_error() as e:
        return _write_failed("export", e)
    except _errors() as e:
        return _fail("export", e)
    print(f"{rep['name']}: relative error {rep['relative_error']:.3e}"
          + (f", truncation {rep['truncation_error']:.3e}" if args.rank is not None else "")
          + f"; written to {rep['folder']}")
    return 0


def _absorb(args) -> int:
    from .absorb import absorb

    why = _unwritable(args.out or args.zoo, "--out" if args.out else "ZOO")
    if why:
        return _fail("absorb", why)
    try:
        zoo = _load(args.zoo)
        new, rep = absorb(zoo, args.adapter, name=args.name, update_bases=args.update_bases)
        new.save(args.out or args.zoo)
    except _write_error() as e:
        return _write_failed("absorb", e)
    except _errors() as e:
        return _fail("absorb", e)
    print(f"{rep['name']}: relative error {rep['relative_error']:.3e} (worst module {rep['worst_module']}: "
          f"{rep['worst_module_error']:.3e}){'; bases updated' if rep['updated_bases'] else ''}; "
          f"written to {args.out or args.zoo}")
    return 0


def _merge(args) -> int:
    from .merge import merge

    try:
        rep = merge(args.adapters, args.out, method=args.method, scale=args.scale, weights=args.weights,
                    density=args.density, drop=args.drop, seed=args.seed, rank=args.rank, energy=args.energy,
                    out_rank=args.out_rank, dtype=args.dtype, modules=args.modules)
    except _write_error() as e:
        return _write_failed("merge", e)
    except _errors() as e:
        return _fail("merge", e)
    print(f"{args.method} of {len(rep['adapters'])} adapters written to {rep['folder']}; worst truncation error "
          f"{rep['worst_module_error']:.3e} ({rep['worst_module']})")
    return 0


def _inspect(args) -> int:
    try:
        zoo = _load(args.zoo)
    except _errors() as e:
        return _fail("inspect", e)
    _print_report(zoo)
    print(json.dumps(zoo.options))
    return 0
