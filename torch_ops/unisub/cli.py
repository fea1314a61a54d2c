"""The ``unisub`` command line."""
import argparse
import sys

from . import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unisub", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unisub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show what unisub finds on a stack of models, against a null")
    demo.add_argument("--models", type=int, default=64, help="models in the stack (default 64)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_run_demo)
    return parser


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(models=args.models, seed=args.seed)
    return 0


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
