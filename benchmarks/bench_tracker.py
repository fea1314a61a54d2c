"""ConvergenceTracker.step() against the training step it observes.

The model: a 12-layer, 768-wide MLP (Linear 768 → 768 + GELU, biases untracked), every weight
tracked with rank-32 bases; the training step is zero_grad + forward + backward + AdamW on a batch
of `rows` × 768 inputs. The tracker's step is timed after a change of the tracked weights (a
precomputed small delta added in place, ~1 ms for the whole model, included in "ours"), so that it
pays for everything a real step pays for: three energies per layer, the update's sketches and the
window's estimate and principal angles.

In harness terms the baseline is the training step, so "speedup" = train step / tracker step:
the tracker costs 1/speedup of a training step when it runs on every step, and 1/(every·speedup)
with every=N.

Cases: bases on both sides (U, V: 768 × 32) or the out side only; window 8 (angles on) or 0
(energies only); a call on a skipped step (every > 1) is timed too.
"""
import torch

from harness import Case, time_once

WIDTH, LAYERS, RANK = 768, 12, 32


def _orthonormal(rows, cols, gen, dtype, device):
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0].to(dtype).to(device)


def mlp(dtype, device, layers=LAYERS, width=WIDTH):
    mods = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width, dtype=dtype), torch.nn.GELU()]
    return torch.nn.Sequential(*mods).to(device)


def setup(device, dtype, gen, rows=64, sides="both", window=8, every=1):
    """(model, train_step, tracker, tracker_step) for one configuration."""
    from unisub.tracker import ConvergenceTracker

    model = mlp(dtype, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(rows, WIDTH, generator=gen, dtype=dtype).to(device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    train_step()  # gradients and optimizer state exist from here on
    subspaces = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:
            U = _orthonormal(WIDTH, RANK, gen, dtype, device)
            V = _orthonormal(WIDTH, RANK, gen, dtype, device) if sides == "both" else None
            subspaces[name] = (U, V)
    tracker = ConvergenceTracker(model, subspaces, window=window, every=every, seed=0)
    weights = [p for n, p in model.named_parameters() if n in subspaces]
    deltas = [1e-4 * torch.randn(p.shape, generator=gen, dtype=dtype).to(device) for p in weights]

    def tracker_step():
        with torch.no_grad():
            torch._foreach_add_(weights, deltas)
        return tracker.step()

    return model, train_step, tracker, tracker_step


def cases(device: str, size: str = "quick", dtypes=(torch.float32,)):
    gen = torch.Generator().manual_seed(0)
    batches = (64,) if size == "quick" else (64, 512)
    configs = [("both", 8), ("both", 0), ("out", 8)]
    for dtype in dtypes:
        for rows in batches:
            for sides, window in configs:
                _, train_step, tracker, tracker_step = setup(device, dtype, gen, rows, sides, window)
                for _ in range(window + 1):  # fill the window: the steady state
                    tracker_step()
                label = f"{LAYERS}x{WIDTH} MLP r={RANK} {sides} w={window} batch {rows}"
                yield Case(op="tracker.step", shape=label, dtype=dtype, device=device, ours=tracker_step,
                           baselines={"train step (AdamW)": train_step})
        _, train_step, tracker, _ = setup(device, dtype, gen, 64, "both", 8, every=10**9)
        yield Case(op="tracker.step skipped", shape=f"{LAYERS}x{WIDTH} MLP every>1", dtype=dtype, device=device,
                   ours=tracker.step, baselines={"train step (AdamW)": train_step})


def interleaved(device="cpu", size="full", rounds=5):
    """On a shared, noisy machine: time the tracker step and the training step alternately,
    `rounds` times, keep each one's fastest run (contention only ever adds time) and print the
    tracker's cost as a fraction of the training step."""
    for case in cases(device, size):
        fns = {"tracker": case.ours, **case.baselines}
        best = {name: float("inf") for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                best[name] = min(best[name], time_once(fn, device))
        train = best["train step (AdamW)"]
        print(f"{case.op:<21} {case.shape:<44} {device:<5} tracker {1e3 * best['tracker']:9.3f} ms | "
              f"train step {1e3 * train:8.2f} ms | tracker / train = {best['tracker'] / train:.3f}", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=interleaved.__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="full", choices=["quick", "full"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    interleaved(args.device, args.size, args.rounds)
