"""The PyTorch op contracts: opcheck, gradcheck, torch.compile, torch.export, TorchScript."""
import subprocess

import pytest
import torch

import unisub
from conftest import build_dir
from references import gram_reference


def gram_samples(device):
    g = torch.Generator().manual_seed(7)
    for shape in [(4, 3), (3, 4, 5), (2, 3, 2, 4)]:
        for dim in range(len(shape)):
            for center in (False, True):
                for dtype in (torch.float32, torch.float64):
                    X = torch.randn(shape, generator=g, dtype=dtype).to(device)
                    yield X.requires_grad_(dtype == torch.float64), dim, center


def test_opcheck_mode_gram(device):
    for X, dim, center in gram_samples(device):
        torch.library.opcheck(torch.ops.unisub.mode_gram.default, (X, dim, center))


def test_opcheck_gram_update(device):
    for X, dim, _ in gram_samples(device):
        X = X.detach()
        d = X.shape[dim]
        G = torch.zeros(d, d, dtype=torch.float64, device=device)
        torch.library.opcheck(torch.ops.unisub.gram_update_.default, (G, X, dim))


@pytest.mark.parametrize("center", [False, True])
def test_gradcheck_mode_gram(center, device):
    g = torch.Generator().manual_seed(3)
    for shape in [(4, 3), (3, 4, 2), (2, 3, 2, 2)]:
        for dim in range(len(shape)):
            X = torch.randn(shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
            f = lambda X: unisub.mode_gram(X, dim, center)  # noqa: E731
            assert torch.autograd.gradcheck(f, (X,))
            assert torch.autograd.gradgradcheck(f, (X,))


def test_gradient_of_half_input_has_its_dtype(device):
    X = torch.randn(3, 4, 5, device=device).half().requires_grad_()
    unisub.mode_gram(X, 1, center=True).sum().backward()
    assert X.grad.dtype == torch.float16 and torch.isfinite(X.grad).all()


def test_torch_compile_fullgraph(device):
    def explained(X, G):
        torch.ops.unisub.gram_update_(G, X, 2)
        C = unisub.mode_gram(X, 1, center=True)
        return torch.linalg.eigvalsh(C).flip(0), G * 2

    compiled = torch.compile(explained, fullgraph=True)
    X = torch.randn(8, 6, 5, dtype=torch.float64, device=device)
    G1 = torch.zeros(5, 5, dtype=torch.float64, device=device)
    G2 = G1.clone()
    ev, twice = compiled(X, G1)
    ev_ref, twice_ref = explained(X, G2)
    torch.testing.assert_close(ev, ev_ref)
    torch.testing.assert_close(twice, twice_ref)
    torch.testing.assert_close(G1, G2)  # the mutation happened under compile too


def test_torch_export(device):
    class Spectrum(torch.nn.Module):
        def forward(self, X):
            return unisub.mode_gram(X, 2, center=True)

    X = torch.randn(5, 4, 3, dtype=torch.float64, device=device)
    exported = torch.export.export(Spectrum(), (X,))
    assert any("unisub.mode_gram" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(X).cpu(), gram_reference(X, 2, True))


def test_torchscript_saved_and_run_from_cpp(tmp_path):
    """The path TorchScript users take: script in Python, save, run from a C++ program."""

    @torch.jit.script
    def spectrum(X: torch.Tensor, dim: int) -> torch.Tensor:
        G = torch.ops.unisub.mode_gram(X, dim, True)
        return torch.linalg.eigvalsh(G)

    class Module(torch.nn.Module):
        def forward(self, X: torch.Tensor, dim: int) -> torch.Tensor:
            return spectrum(X, dim)

    scripted = torch.jit.script(Module())
    model_path, inputs_path, outputs_path = (tmp_path / n for n in ("m.pt", "in.pt", "out.pt"))
    scripted.save(str(model_path))
    X = torch.randn(6, 5, 4, dtype=torch.float64)
    torch.save((X, 1), inputs_path)

    tool = build_dir() / "csrc" / "tools" / "unisub-run-script"
    assert tool.is_file(), f"{tool} was not built (the test command builds it)"
    run = subprocess.run([str(tool), str(model_path), str(inputs_path), str(outputs_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = torch.load(outputs_path)
    torch.testing.assert_close(result, torch.linalg.eigvalsh(gram_reference(X, 1, True)))
    torch.testing.assert_close(result, scripted(X, 1))


def test_cpp_tool_reports_errors(tmp_path):
    tool = build_dir() / "csrc" / "tools" / "unisub-run-script"
    run = subprocess.run([str(tool), str(tmp_path / "missing.pt"), "a", "b"], capture_output=True, text=True)
    assert run.returncode == 1 and "unisub-run-script:" in run.stderr
