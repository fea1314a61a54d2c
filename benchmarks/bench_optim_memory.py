"""SubspaceAdamW against torch.optim.AdamW: optimizer-state memory and time per step.

Model: an MLP stack of `layers` blocks, each a 768 → 3072 and a 3072 → 768 Linear with biases
(GPT-2 small's MLP shapes; 12 blocks = 56.7 M parameters). Subspace configurations, rank 32:

- "one-sided": each weight projected on its smaller side (GaLore's choice), state 3072 × 32;
  fixed bases shared by the blocks' same-shaped weights (as a universal subspace would be);
- "two-sided": both sides, state 32 × 32;
- "gradient": GradientSubspace(32, smaller side, every=200, method="randomized"), bases per
  weight kept in the optimizer state (counted in it).

Biases get plain AdamW in every configuration.

    python3 benchmarks/run.py optim_memory         # harness timing (ms per optimizer step)
    python3 benchmarks/bench_optim_memory.py       # memory table + interleaved timing, 12 blocks
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unisub  # noqa: E402,F401
from unisub.optim import GradientSubspace, SubspaceAdamW, basis_bytes, state_bytes  # noqa: E402

from harness import Case, time_once  # noqa: E402

RANK = 32


class MLPStack(torch.nn.Module):
    def __init__(self, layers=12, width=768, dtype=torch.float32):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"fc": torch.nn.Linear(width, 4 * width, dtype=dtype),
                                 "proj": torch.nn.Linear(4 * width, width, dtype=dtype)})
            for _ in range(layers))


def _orthonormal(rows, cols, gen, dtype):
    # contiguous: the mapping keeps a contiguous basis as is, so the blocks share one copy
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype).contiguous()


def subspaces_for(model, config, gen, rank=RANK):
    shared, out = {}, {}
    for name, p in model.named_parameters():
        if p.dim() != 2:
            continue
        m, n = p.shape
        smaller = "out" if m <= n else "in"
        if config == "gradient":
            out[name] = GradientSubspace(rank, side=smaller, every=200, method="randomized")
            continue
        for d in (m, n):
            if d not in shared:
                shared[d] = _orthonormal(d, rank, gen, torch.float32 if p.dtype != torch.float64 else p.dtype)
        if config == "one-sided":
            out[name] = (shared[m], None) if smaller == "out" else (None, shared[n])
        else:
            out[name] = (shared[m], shared[n])
    return out


def setup(config, layers, dtype, device, gen):
    """A model with random gradients and its optimizer after one step (state allocated)."""
    model = MLPStack(layers, dtype=dtype).to(device)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(dtype).to(device)
    if config == "torch":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        opt = SubspaceAdamW(model, subspaces_for(model, config, gen), lr=1e-4)
    opt.step()
    return model, opt


def memory_table(layers=12, dtype=torch.float32, device="cpu", gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    rows = []
    ref = None
    for config in ("torch", "one-sided", "two-sided", "gradient"):
        model, opt = setup(config, layers, dtype, device, gen)
        params = sum(p.numel() for p in model.parameters())
        sb = state_bytes(opt)
        bb = basis_bytes(opt) if isinstance(opt, SubspaceAdamW) else 0
        ref = ref or sb
        rows.append((config, params, sb, bb))
        print(f"{config:<10} params {params / 1e6:6.1f} M | optimizer state {sb / 2**20:8.2f} MiB "
              f"({sb / ref:6.2%} of torch AdamW) | fixed bases outside the state {bb / 2**20:6.2f} MiB",
              flush=True)
        del model, opt
    return rows


def cases(device: str, size: str = "quick", dtypes=(torch.float32,)):
    gen = torch.Generator().manual_seed(0)
    layers = 12 if size == "full" else 2
    for dtype in dtypes:
        print(f"optimizer-state memory, {layers} MLP blocks 768/3072, rank {RANK}, {dtype}:")
        memory_table(layers, dtype, device, gen)
        _, torch_opt = setup("torch", layers, dtype, device, gen)
        for config in ("one-sided", "two-sided", "gradient"):
            _, opt = setup(config, layers, dtype, device, gen)
            yield Case(op=f"SubspaceAdamW {config}", shape=f"{layers} MLP blocks, r={RANK}", dtype=dtype,
                       device=device, ours=opt.step, baselines={"torch AdamW": torch_opt.step})
        model, opt = setup("gradient", layers, dtype, device, gen)

        def refresh_step(opt=opt):
            opt.refresh()
            opt.step()
        yield Case(op="SubspaceAdamW gradient refresh", shape=f"{layers} MLP blocks, r={RANK}", dtype=dtype,
                   device=device, ours=refresh_step, baselines={"torch AdamW": torch_opt.step})


def interleaved(device="cpu", layers=12, rounds=5):
    """Memory table, then each optimizer's step timed alternately `rounds` times, fastest kept
    (a shared machine's contention only ever adds time)."""
    gen = torch.Generator().manual_seed(0)
    print(f"optimizer-state memory, {layers} MLP blocks 768/3072, rank {RANK}, float32, {device}:")
    memory_table(layers, torch.float32, device, gen)
    opts = {c: setup(c, layers, torch.float32, device, gen)[1] for c in ("torch", "one-sided", "two-sided",
                                                                          "gradient")}

    def refresh_step(opt=opts["gradient"]):
        opt.refresh()
        opt.step()
    fns = {c: o.step for c, o in opts.items()}
    fns["gradient refresh"] = refresh_step
    best = {c: float("inf") for c in fns}
    for _ in range(rounds):
        for c, fn in fns.items():
            best[c] = min(best[c], time_once(fn, device))
    for c, t in best.items():
        print(f"step {c:<17} {1e3 * t:9.1f} ms ({t / best['torch']:.2f}x torch AdamW's time)", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=interleaved.__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    interleaved(args.device, args.layers, args.rounds)
