"""Export a module that calls unisub's ops with ``torch.export``, compile it ahead of time with
AOTInductor into a ``.pt2`` package, and save inputs and eager outputs for the C++ loader
(``main.cpp``). TorchScript is deprecated in torch 2.13; this is its successor for running models
without Python.

    python examples/aoti/export.py --out pkg
    build-aoti/unisub_aoti_example pkg/model.pt2 pkg/data.pt

The graph keeps ``torch.ops.unisub.*`` as calls into the dispatcher, so whatever runs the package
must have libunisub loaded: ``import unisub`` in Python, linking ``unisub::unisub`` in C++.
"""
import argparse
import time
from pathlib import Path

import torch

import unisub


class SubspaceReport(torch.nn.Module):
    """For a stack X[M, m, n] of M models' weights of one layer slot: the centred row Gram of the
    stack and, per model, the share of its weight that lies in a fixed subspace (U, V)."""

    def __init__(self, U: torch.Tensor, V: torch.Tensor):
        super().__init__()
        self.register_buffer("U", U)
        self.register_buffer("V", V)

    def forward(self, X: torch.Tensor):
        gram = torch.ops.unisub.mode_gram(X, 1, True)
        energy = torch.ops.unisub.subspace_energy(X, self.U, self.V, True)
        return gram, energy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt2 and data.pt")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    g = torch.Generator().manual_seed(0)
    m, n, k = 24, 16, 4
    U = unisub.orthonormalize(torch.randn(m, k, generator=g, dtype=torch.float64))
    V = unisub.orthonormalize(torch.randn(n, k, generator=g, dtype=torch.float64))
    X = torch.randn(10, m, n, generator=g, dtype=torch.float64)
    model = SubspaceReport(U, V).eval()

    start = time.perf_counter()
    print("export: torch.export.export ...", flush=True)
    program = torch.export.export(model, (X,))
    print("export: AOTInductor compile (a C++ compile, about a minute on 2 cores) ...", flush=True)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(args.out / "model.pt2"))
    expected = model(X)
    torch.save(((X,), expected), args.out / "data.pt")

    # The package runs from Python too; it must agree with eager before C++ is asked to.
    loaded = torch._inductor.aoti_load_package(package)
    for got, want in zip(loaded(X), expected):
        assert torch.equal(got, want), "the AOTInductor package differs from eager"
    print(f"export: wrote {package} and {args.out / 'data.pt'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
