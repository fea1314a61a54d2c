"""Projection ops against the best plain-PyTorch matmul chains.

- project of a 4096 x 4096 gradient: two-sided (k = l = 64) and left-only (k = 16 ... 256),
  projection and complement, out of place and in place; the baseline is the cheapest chain
  (U @ (U.T @ G), G - U @ (U.T @ G), U @ (((U.T @ G) @ V) @ V.T)). unisub runs with the basis
  check (default) and without it (check_basis=False, the steady state of a training loop).
- project_list_ over the gradients of a 12-layer, 768-wide transformer (GPT-2 small shapes,
  biases and norms included without bases) against a Python loop of per-tensor project_ calls.
- subspace_energy of every weight gradient of that model against one fp32 forward-backward of it
  (the "speedup" column is then forward-backward time / energy time: above 20 means under 5 %).
"""
import torch

import unisub
from harness import Case, time_once


def _orthonormal(rows, cols, gen, dtype, device):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype).to(device)


def _project_cases(device, size, dtype, gen):
    n = 4096 if size == "full" else 2048
    G = torch.randn(n, n, generator=gen, dtype=dtype).to(device)
    configs = [(64, 64)] + [(k, None) for k in ((16, 64, 256) if size == "full" else (16, 128))]
    for k, l in configs:
        U = _orthonormal(n, k, gen, dtype, device)
        V = _orthonormal(n, l, gen, dtype, device) if l else None
        for complement in (False, True):
            if V is None:
                plain = (lambda G=G, U=U: G - U @ (U.T @ G)) if complement else (lambda G=G, U=U: U @ (U.T @ G))
            else:
                def plain(G=G, U=U, V=V, complement=complement):
                    P = U @ (((U.T @ G) @ V) @ V.T)
                    return G - P if complement else P
            label = f"{n}x{n} k={k}" + (f" l={l}" if l else " left") + (" compl" if complement else "")
            for check in (True, False):
                yield Case(op="project" + ("" if check else " nocheck"), shape=label, dtype=dtype, device=device,
                           ours=lambda G=G, U=U, V=V, c=complement, check=check: unisub.project(G, U, V, c, check),
                           baselines={"torch chain": plain})
        if V is None:
            work = G.clone()
            yield Case(op="project_ nocheck", shape=f"{n}x{n} k={k} left compl", dtype=dtype, device=device,
                       ours=lambda W=work, U=U: unisub.project_(W, U, None, True, False),
                       baselines={"torch sub_": lambda W=work, U=U: W.sub_(U @ (U.T @ W))})


def transformer_parameters(layers=12, width=768, vocab=50257, context=1024):
    """(name, shape) of GPT-2 small's parameters, Linear weights as [out, in]."""
    shapes = [("wte", (vocab, width)), ("wpe", (context, width))]
    for i in range(layers):
        for name, shape in [("ln1.w", (width,)), ("ln1.b", (width,)), ("attn.qkv.w", (3 * width, width)),
                            ("attn.qkv.b", (3 * width,)), ("attn.out.w", (width, width)), ("attn.out.b", (width,)),
                            ("ln2.w", (width,)), ("ln2.b", (width,)), ("mlp.fc.w", (4 * width, width)),
                            ("mlp.fc.b", (4 * width,)), ("mlp.proj.w", (width, 4 * width)), ("mlp.proj.b", (width,))]:
            shapes.append((f"h{i}.{name}", shape))
    shapes += [("lnf.w", (width,)), ("lnf.b", (width,))]
    return shapes


def model_gradients(gen, dtype, device, rank=32):
    """Gradients and bases as a GaLore-style hook sees them: each 2-D weight projected on its
    smaller side with a rank-32 basis shared by the layers' same-shaped weights."""
    Gs, Us, Vs, bases = [], [], [], {}
    for _, shape in transformer_parameters():
        Gs.append(torch.randn(shape, generator=gen, dtype=dtype).to(device))
        if len(shape) == 1:
            Us.append(None)
            Vs.append(None)
            continue
        m, n = shape
        if (m, n) not in bases:
            bases[(m, n)] = _orthonormal(min(m, n), rank, gen, dtype, device)
        B = bases[(m, n)]
        Us.append(B if m <= n else None)
        Vs.append(B if m > n else None)
    return Gs, Us, Vs


def _list_cases(device, size, dtype, gen):
    Gs, Us, Vs = model_gradients(gen, dtype, device)

    def loop(check):
        def fn():
            for G, U, V in zip(Gs, Us, Vs):
                if U is not None or V is not None:
                    unisub.project_(G, U, V, True, check)
                else:
                    G.zero_()
        return fn

    for check in (False, True):
        yield Case(op="project_list_" + ("" if check else " nocheck"), shape=f"GPT-2 small grads ({len(Gs)} tensors)",
                   dtype=dtype, device=device,
                   ours=lambda check=check: unisub.project_list_(Gs, Us, Vs, True, check),
                   baselines={"python loop of project_": loop(check)})


def _energy_case(device, size, dtype, gen):
    Gs, Us, Vs = model_gradients(gen, dtype, device)
    weights = [(G, U, V) for G, U, V in zip(Gs, Us, Vs) if U is not None or V is not None]
    tokens = (8, 128) if size == "full" else (2, 64)
    layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, batch_first=True, dtype=dtype)
    model = torch.nn.Sequential(torch.nn.Embedding(50257, 768, dtype=dtype),
                                torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False),
                                torch.nn.Linear(768, 50257, bias=False, dtype=dtype)).to(device)
    ids = torch.randint(0, 50257, tokens, generator=gen).to(device)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(ids).float().logsumexp(-1).mean().backward()

    def energies():
        return [unisub.subspace_energy(G, U, V, False) for G, U, V in weights]

    yield Case(op="subspace_energy all layers", shape=f"vs fwd-bwd of {tokens[0]}x{tokens[1]} tokens",
               dtype=dtype, device=device, ours=energies, baselines={"one fwd-bwd": forward_backward})


def cases(device: str, size: str = "quick", dtypes=(torch.float32,)):
    gen = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        yield from _project_cases(device, size, dtype, gen)
        yield from _list_cases(device, size, dtype, gen)
        yield from _energy_case(device, size, dtype, gen)


def interleaved(device="cpu", size="full", rounds=7, only=""):
    """On a shared, noisy machine: time ours and each baseline alternately, `rounds` times, and
    keep each one's fastest run (contention only ever adds time)."""
    def once(fn):
        return time_once(fn, device)

    for case in cases(device, size):
        if only not in case.op:
            continue
        fns = {"ours": case.ours, **case.baselines}
        for fn in fns.values():
            fn()  # warm-up
        best = {name: min(once(fn) for _ in range(1)) for name, fn in fns.items()}
        for _ in range(rounds - 1):
            for name, fn in fns.items():
                best[name] = min(best[name], once(fn))
        base = "  ".join(f"{n}: {1e3 * t:.2f} ms ({t / best['ours']:.2f}x)" for n, t in best.items() if n != "ours")
        print(f"{case.op:<26} {case.shape:<40} {device:<5} ours {1e3 * best['ours']:9.2f} ms | {base}", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=interleaved.__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="full", choices=["quick", "full"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="run the cases whose op name contains this")
    args = parser.parse_args()
    interleaved(args.device, args.size, args.rounds, args.only)
