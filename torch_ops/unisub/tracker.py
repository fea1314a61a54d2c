"""Track, during training, how much of each layer's weight, update and gradient lies in a subspace,
and how far the subspace the run is actually moving in is from a reference (DESIGN.md §1 use (e)).

    tracker = ConvergenceTracker(model, subspaces, every=10, csv="run/convergence.csv")
    for batch in data:
        loss(model, batch).backward()
        optimizer.step()
        metrics = tracker.step()      # after optimizer.step(), before zero_grad(): {} on skipped steps
        optimizer.zero_grad()
    tracker.close()

See docs/tracking.md for what each number means, its cost and its memory.
"""
import csv as _csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch

from .mapping import MappedParameter, SubspaceSpec, map_parameters
from .ops.decompositions import orthonormalize, svd
from .ops.metrics import principal_angles
from .ops.projection import subspace_energy

PathLike = Union[str, Path]

#: Extra columns of each update's random sketch beyond the estimated rank (as in randomized SVD).
OVERSAMPLE = 10
#: Default CSV file name inside ``log_dir``.
CSV_NAME = "convergence.csv"


class _Side:
    """The run's recent updates on one side (out: rows, in: columns) of one layer, and the running
    estimate of their leading subspace.

    Memory: a ring buffer of Gaussian sketches ``Y_t = ΔW_t Ω_t`` (out) or ``ΔW_tᵀ Ω_t`` (in), with a
    fresh ``Ω_t`` of ``s = rank + OVERSAMPLE`` columns per update, stored side by side as
    ``A = [Y_1 … Y_window]`` (rows × window·s). ``E[Y_t Y_tᵀ] = s·ΔW_t ΔW_tᵀ``: ``A Aᵀ`` estimates,
    up to the factor s, the Gram of the window's stacked updates, whose leading eigenvectors are the
    run's own subspace. Where ``s`` would reach the other dimension the update itself is stored
    (``Ω = I``) and A holds the stacked updates exactly.

    Estimate: Rayleigh–Ritz on ``span(A [Aᵀ Q_prev, G])``, i.e. one block power iteration from the
    previous estimate ``Q_prev`` (subspace iteration spread over the tracked steps) plus
    OVERSAMPLE fresh random directions ``A G``; then the SVD of the small ``(rank + OVERSAMPLE) × c``
    matrix ``Qᵀ A``. Exact whenever the window's updates span at most rank + OVERSAMPLE directions."""

    def __init__(self, side: str, ref: torch.Tensor, rank: Optional[int], other: int, window: int,
                 generator: Optional[torch.Generator]):
        self.side = side
        self.ref = ref
        rows = ref.shape[0]
        self.rank = min(rank if rank is not None else ref.shape[1], rows)
        s = self.rank + OVERSAMPLE
        self.exact = s >= other
        self.width = other if self.exact else s
        self.other = other
        self.window = window
        self.buffer = torch.zeros(rows, window * self.width, dtype=ref.dtype, device=ref.device)
        self.noise = torch.zeros(window, dtype=torch.float64, device=ref.device)
        self.filled = 0
        self.next = 0
        self.generator = generator
        self.previous: Optional[torch.Tensor] = None  # the last estimate, rank columns

    def _randn(self, rows, cols, like):
        return torch.randn(rows, cols, dtype=like.dtype, device=like.device, generator=self.generator)

    def state(self) -> dict:
        return {"side": self.side, "buffer": self.buffer.clone(), "noise": self.noise.clone(),
                "filled": self.filled, "next": self.next,
                "previous": None if self.previous is None else self.previous.clone()}

    def load(self, state: dict, where: str):
        if state.get("side") != self.side or tuple(state["buffer"].shape) != tuple(self.buffer.shape):
            raise ValueError(f"{where}: saved window of side {state.get('side')!r} with buffer "
                             f"{tuple(state['buffer'].shape)} does not match this tracker's side {self.side!r} "
                             f"with buffer {tuple(self.buffer.shape)} (window, rank or shapes differ)")
        self.buffer.copy_(state["buffer"])
        self.noise.copy_(state["noise"])
        self.filled, self.next = int(state["filled"]), int(state["next"])
        prev = state["previous"]
        self.previous = None if prev is None else prev.to(device=self.buffer.device, dtype=self.buffer.dtype)

    def push(self, delta: torch.Tensor, noise: torch.Tensor):
        """``delta`` is the m × n update; the out side sketches its columns, the in side its rows.
        ``noise`` bounds ‖rounding error of delta‖_F (the weights' own rounding, ε‖W‖_F)."""
        D = delta if self.side == "out" else delta.T
        slot = self.buffer[:, self.next * self.width:(self.next + 1) * self.width]
        if self.exact:
            slot.copy_(D)
            self.noise[self.next] = noise
        else:
            slot.copy_(D @ self._randn(self.other, self.width, D))
            self.noise[self.next] = noise * self.width ** 0.5  # ‖E Ω‖_F ≈ √s ‖E‖_F
        self.next = (self.next + 1) % self.window
        self.filled = min(self.filled + 1, self.window)

    def estimate(self) -> Optional[torch.Tensor]:
        """Orthonormal basis of the window's leading left singular subspace, at ``rank`` columns or
        fewer where the window's updates span fewer directions than that (numerical rank, above
        the weights' rounding); None when no update in the window moved the weights, or one of
        them is not finite."""
        if self.filled == 0:
            return None
        A = self.buffer[:, :self.filled * self.width]  # column order does not matter
        if not bool(torch.isfinite(A).all()):
            return None  # a non-finite update (diverged weights) is in the window: NaN until it leaves
        rows, cols = A.shape
        k = min(self.rank, cols)
        q = min(k + OVERSAMPLE, rows)
        # float32: the Gram route (float64 Gram of a q-column matrix) is accurate to 1e-8·σ₁, below
        # float32's own rounding; float64 keeps LAPACK.
        method = "gram" if A.dtype == torch.float32 else "auto"
        if cols <= q:
            U, S, _ = svd(A, min(rows, cols), "auto")
        else:
            Z = self._randn(cols, q, A)
            if self.previous is not None:
                P = A.T @ self.previous
                Z[:, :P.shape[1]] = P / torch.linalg.vector_norm(P, dim=0).clamp_min(torch.finfo(P.dtype).tiny)
            Q = orthonormalize(A @ Z)
            _, S, Vbh = svd(A.T @ Q, q, method)  # Aᵀ Q = Ub S Vbh, so Qᵀ A = Vbhᵀ S Ubᵀ
            U = Q @ Vbh.T
        U, S = U[:, :k], S[:k]
        if not bool(torch.isfinite(S).all()) or float(S[0]) == 0.0:
            return None
        self.previous = U
        # Directions below the rounding noise of the weights are not the run's: 2·‖noise‖_F bounds
        # every singular value that rounding alone can produce (plus matrix_rank's usual tolerance).
        tol = max(max(rows, cols) * torch.finfo(A.dtype).eps * float(S[0]),
                  2 * float(self.noise[:self.filled].square().sum().sqrt()))
        return U[:, :int((S > tol).sum())]


class _Layer:
    def __init__(self, mp: MappedParameter, ref: Optional[MappedParameter], window: int, rank: Optional[int],
                 generator: Optional[torch.Generator]):
        self.mp = mp
        self.name = mp.name
        self.dtype = mp.U.dtype if mp.U is not None else mp.V.dtype
        self.eps = torch.finfo(mp.param.dtype).eps  # the weights' rounding: the floor of any update
        self.W0 = self.current().clone()
        self.sides: List[_Side] = []
        if ref is not None and window > 0:
            m, n = mp.matrix_shape
            if ref.U is not None:
                self.sides.append(_Side("out", ref.U, rank, n, window, generator))
            if ref.V is not None:
                self.sides.append(_Side("in", ref.V, rank, m, window, generator))
        self.previous = self.W0.clone() if self.sides else None

    def current(self) -> torch.Tensor:
        return self.mp.as_matrix(self.mp.param.detach()).to(self.dtype)

    def state(self) -> dict:
        return {"W0": self.W0.clone(), "previous": None if self.previous is None else self.previous.clone(),
                "sides": [side.state() for side in self.sides]}

    def load(self, state: dict):
        where = f"ConvergenceTracker.load_state_dict: layer {self.name!r}"
        if tuple(state["W0"].shape) != tuple(self.W0.shape) or len(state["sides"]) != len(self.sides):
            raise ValueError(f"{where}: saved W0 {tuple(state['W0'].shape)} with {len(state['sides'])} tracked "
                             f"sides does not match this tracker's {tuple(self.W0.shape)} with {len(self.sides)}")
        self.W0.copy_(state["W0"])
        if self.previous is not None:
            self.previous.copy_(state["previous"])
        for side, saved in zip(self.sides, state["sides"]):
            side.load(saved, where)

    def keys(self) -> List[str]:
        keys = ["weight_energy"] + (["mean_share"] if self.mp.mean is not None else [])
        keys += ["update_energy", "grad_energy"]
        if self.sides:
            keys.append("max_angle")
            for side in self.sides:
                keys += [f"max_angle_{side.side}", f"distance_{side.side}"]
        return [f"{self.name}/{k}" for k in keys]

    def measure(self) -> torch.Tensor:
        """The values of ``keys()`` as one float64 vector on the parameter's device."""
        mp, U, V = self.mp, self.mp.U, self.mp.V
        nan = torch.full((), math.nan, dtype=self.dtype, device=self.W0.device)
        W = self.current()
        out = []
        if mp.mean is not None:
            D = W - mp.mean
            out.append(subspace_energy(D, U, V, False))
            norm = torch.linalg.vector_norm
            out.append(1 - (norm(D, dtype=torch.float64) / norm(W, dtype=torch.float64)) ** 2)
        else:
            out.append(subspace_energy(W, U, V, False))
        out.append(subspace_energy(W - self.W0, U, V, False))
        g = mp.param.grad
        out.append(subspace_energy(mp.as_matrix(g.detach()), U, V, False) if g is not None else nan)
        if self.sides:
            # A step in which the weights did not move pushes a zero update (it adds nothing to
            # the estimate, and takes a slot of the window).
            delta = W - self.previous
            noise = self.eps * torch.linalg.vector_norm(W).double()
            for side in self.sides:
                side.push(delta, noise)
            self.previous.copy_(W)
            values = []
            for side in self.sides:
                est = side.estimate()
                if est is None or est.shape[1] == 0:
                    values.append((nan, nan))
                    continue
                theta = principal_angles(est, side.ref, False)
                # subspace_distance(est, ref, "projection") = √Σ sin²θ, from the same angles
                values.append((theta[-1], torch.sin(theta).square().sum().sqrt()))
            out.append(torch.stack([v[0] for v in values]).max())  # NaN if any side is NaN
            for a, d in values:
                out += [a, d]
        return torch.stack([v.to(torch.float64) for v in out])


class ConvergenceTracker:
    """Energy of each tracked layer's weight, update (W − W₀) and gradient inside its subspace, and
    principal angles between the subspace of the run's recent updates and a reference.

    Args:
        model: the module (anything with ``named_parameters()``) being trained.
        subspaces: parameter name → subspace, as :func:`unisub.mapping.map_parameters` accepts
            (a :class:`unisub.Subspace`, a ``(U, V)`` pair, or ``{"out": U, "in": V}``); checked
            here, once (names, shapes, orthonormality).
        reference: the subspaces the run's own update subspace is compared with; ``None`` uses
            ``subspaces``. Another mapping (e.g. a subspace fitted on other models) may cover any
            of the tracked parameters; the others get no angles.
        every: measure on steps that are multiples of ``every``; other calls return ``{}``.
        window: how many recent updates (ΔW = W_t − W at the previous tracked step) the run's
            subspace is estimated from; 0 turns the angles off (and their memory and cost).
        rank: columns of the estimated subspace; ``None`` uses the reference basis's rank.
        log_dir: base folder for relative ``csv``/``tensorboard`` paths and for ``True``; given
            alone, a CSV is written to ``log_dir/convergence.csv``.
        csv: a CSV file (one row per tracked step, flushed after each row), or ``True`` for
            ``log_dir/convergence.csv``. An existing tracker CSV is replaced (unless ``append``);
            any other existing non-empty file is refused (``ValueError``), as is a folder.
        tensorboard: a TensorBoard log folder (``torch.utils.tensorboard.SummaryWriter``), or
            ``True`` for ``log_dir``.
        seed: seed of the random sketches (on the parameters' device); ``None`` draws from torch's
            global generator (then a resumed run matches only if that generator's state is restored too).
        append: continue an existing CSV (its header must be this tracker's) instead of starting
            a new one, for a run resumed with :meth:`load_state_dict`.

    Call :meth:`step` once per optimizer step, after ``optimizer.step()`` and before
    ``zero_grad()``: the weight is then the updated one and ``p.grad`` the gradient that produced
    the update. Gradient energies are NaN for parameters without a ``.grad``.
    """

    def __init__(self, model, subspaces: Mapping[str, SubspaceSpec],
                 reference: Optional[Mapping[str, SubspaceSpec]] = None, every: int = 1, window: int = 8,
                 rank: Optional[int] = None, log_dir: Optional[PathLike] = None,
                 csv: Union[None, bool, PathLike] = None, tensorboard: Union[None, bool, PathLike] = None,
                 seed: Optional[int] = None, append: bool = False):
        if not hasattr(model, "named_parameters"):
            raise TypeError(f"model must have named_parameters() (a torch.nn.Module), got {type(model).__name__}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ValueError(f"window must be a non-negative integer, got {window!r}")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise ValueError(f"rank must be a positive integer or None, got {rank!r}")
        mapped = map_parameters(model.named_parameters(), subspaces)
        if not mapped:
            raise ValueError("subspaces is empty: map at least one parameter to a subspace")
        if reference is None:
            refs = {mp.name: mp for mp in mapped}
        else:
            refs = {mp.name: mp for mp in map_parameters(model.named_parameters(), reference)}
            untracked = sorted(set(refs) - {mp.name for mp in mapped})
            if untracked:
                raise ValueError(f"reference names parameters that subspaces does not track: {untracked}")
        self.every = every
        self.window = window
        self._calls = 0
        self._generators: Dict[torch.device, torch.Generator] = {}
        generators = self._generators
        with torch.no_grad():
            self.layers = []
            for mp in mapped:
                gen = None
                if seed is not None:
                    if mp.param.device not in generators:
                        generators[mp.param.device] = torch.Generator(device=mp.param.device).manual_seed(seed)
                    gen = generators[mp.param.device]
                self.layers.append(_Layer(mp, refs.get(mp.name), window, rank, gen))
        layer_keys = [layer.keys() for layer in self.layers]
        names = [k.split("/", 1)[1] for keys in layer_keys for k in keys]
        self._mean_names = [n for n in dict.fromkeys(names)]
        #: every key :meth:`step` returns on a tracked step, in order (the CSV columns after "step").
        self.keys: List[str] = [k for keys in layer_keys for k in keys] + [f"mean/{n}" for n in self._mean_names]
        self.last: Dict[str, float] = {}
        self._csv_file = self._csv = self._tb = None
        base = Path(log_dir) if log_dir is not None else None
        if base is not None and csv is None and tensorboard is None:
            csv = True
        csv_path = self._resolve(base, csv, CSV_NAME, "csv")
        tb_path = self._resolve(base, tensorboard, None, "tensorboard")
        SummaryWriter = None
        if tb_path is not None:  # before any file is created: a missing package leaves nothing behind
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("ConvergenceTracker(tensorboard=...) needs the tensorboard package: "
                                  "pip install tensorboard (or pip install 'unisub[tensorboard]')") from e
        if csv_path is not None:
            if csv_path.is_dir():
                raise ValueError(f"csv: {csv_path} is a folder; give a file name (or log_dir={str(csv_path)!r} "
                                 f"for {CSV_NAME} inside it)")
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            header = ["step", *self.keys]
            found = _first_row(csv_path)
            if not append and found is not None and found != header:
                # this tracker's own CSV (the same columns: a rerun) is replaced; any other file may be
                # the user's data (a training log whose first column is "step" too)
                raise ValueError(f"csv: {csv_path} exists and is not this ConvergenceTracker's CSV (first row "
                                 f"{found[:3]}..., expected {header[:3]}...); it would be overwritten: write to a "
                                 "new file")
            resumed = append and found is not None
            if resumed:
                if found != header:
                    raise ValueError(f"append=True: {csv_path} has columns {found[:4] if found else found}... "
                                     f"that are not this tracker's {header[:4]}... (other layers or reference); "
                                     "write to a new file")
            self._csv_file = open(csv_path, "a" if resumed else "w", newline="")
            self._csv = _csv.writer(self._csv_file)
            if not resumed:
                self._csv.writerow(header)
                self._csv_file.flush()
        if tb_path is not None:
            self._tb = SummaryWriter(log_dir=str(tb_path))

    @staticmethod
    def _resolve(base: Optional[Path], value, default_name: Optional[str], what: str) -> Optional[Path]:
        if value is None or value is False:
            return None
        if value is True:
            if base is None:
                raise ValueError(f"{what}=True needs log_dir")
            return base / default_name if default_name else base
        path = Path(value)
        return base / path if base is not None and not path.is_absolute() else path

    def step(self, global_step: Optional[int] = None) -> Dict[str, float]:
        """Count one training step and, on steps that are multiples of ``every``, measure, log and
        return ``{key: float}`` (``{}`` otherwise). ``global_step`` (e.g. when resuming) replaces the
        internal count, which starts at 1 on the first call, for the multiple test and the logs."""
        self._calls += 1
        step = self._calls if global_step is None else int(global_step)
        if step % self.every != 0:
            return {}
        with torch.no_grad():
            flat = torch.cat([layer.measure().cpu() for layer in self.layers]).tolist()
        result = dict(zip((k for k in self.keys if not k.startswith("mean/")), flat))
        for name in self._mean_names:
            vals = [v for k, v in result.items() if k.rsplit("/", 1)[1] == name and not math.isnan(v)]
            result[f"mean/{name}"] = sum(vals) / len(vals) if vals else math.nan
        self.last = result
        self._log(step, result)
        return result

    def state_dict(self) -> dict:
        """Everything :meth:`step` carries from one call to the next: the step count, each layer's
        W₀ and window of sketched updates, the last estimates and the sketches' generator states.
        Plain tensors, numbers and strings (``torch.load(..., weights_only=True)`` reads it)."""
        return {
            "version": 1, "calls": self._calls, "keys": list(self.keys),
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
            "layers": {layer.name: layer.state() for layer in self.layers},
        }

    def load_state_dict(self, state: dict):
        """Continue a run from :meth:`state_dict`: construct the tracker as before (same model
        parameters, subspaces, reference, window, rank, seed; ``append=True`` to continue its CSV),
        load the model's weights, then this. The next :meth:`step` returns what the uninterrupted
        run would have returned."""
        if state.get("version") != 1:
            raise ValueError(f"ConvergenceTracker.load_state_dict: unknown state version {state.get('version')!r}")
        if list(state["keys"]) != self.keys:
            raise ValueError("ConvergenceTracker.load_state_dict: the saved tracker measured other keys "
                             f"({len(state['keys'])} vs {len(self.keys)}: different layers, reference or "
                             "window); construct it with the same arguments")
        saved_gens = state["generators"]
        if set(saved_gens) != {str(d) for d in self._generators}:
            raise ValueError("ConvergenceTracker.load_state_dict: the saved tracker was seeded on devices "
                             f"{sorted(saved_gens)}, this one on {sorted(str(d) for d in self._generators)} "
                             "(pass the same seed)")
        for layer in self.layers:
            layer.load(state["layers"][layer.name])
        for device, gen in self._generators.items():
            gen.set_state(saved_gens[str(device)])
        self._calls = int(state["calls"])

    def _log(self, step: int, result: Dict[str, float]):
        if self._csv is not None:
            self._csv.writerow([step, *(repr(result[k]) for k in self.keys)])
            self._csv_file.flush()
        if self._tb is not None:
            for k in self.keys:
                if math.isfinite(result[k]):
                    self._tb.add_scalar(k, result[k], step)
            self._tb.flush()

    def close(self):
        """Flush and close the CSV file and the TensorBoard writer (idempotent)."""
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _first_row(path: Path) -> Optional[list]:
    """The first row of an existing non-empty file, ``[]`` for one that is not text; None when
    there is no such file."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with open(path, newline="") as f:
            line = f.readline(1 << 16)  # bounded: the file may be anything, e.g. one huge binary blob
        return next(_csv.reader([line]), [])
    except (UnicodeDecodeError, _csv.Error):
        return []
