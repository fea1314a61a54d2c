"""The demo's model zoo: small MLPs on scikit-learn's 8×8 digits, trained here and cached.

Two zoos of one architecture (64 → 64 → 64 → 10):

* ``finetuned``: a base model pre-trained on the digits, then fine-tuned on different *tasks* —
  by default each a random split of the ten digits into two classes (task t asks "is the digit in
  S_t?"), or with ``tasks="relabel"`` a permutation of the ten labels — the setting of the
  paper's LoRA and ViT zoos: one pre-trained model, many tasks.
* ``scratch``: models trained from different random initialisations on the same kinds of tasks —
  the setting of the critics' counter-claim (hidden units are permuted between runs, so no shared
  subspace should appear beyond what an i.i.d. Gaussian null shows).

Tasks ``0 .. held_out-1`` are held out of the analysis and used to test what the subspace does for
unseen tasks. Everything is deterministic given the seed; the zoo is cached as safetensors files
(one per model, as a user's checkpoints would be) under ``~/.cache/unisub/demo`` so a second run
skips the training.
"""
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..io.safetensors import SafetensorsFile, save_file

LAYERS = ("0.weight", "2.weight", "4.weight")
ZOO_FORMAT = "unisub.demo-zoo/1"


@dataclass(frozen=True)
class ZooConfig:
    seed: int = 0
    finetuned: int = 40      # fine-tuned models in the analysis
    scratch: int = 16        # from-scratch models in the analysis
    held_out: int = 6        # extra fine-tuned models on tasks the analysis never sees
    hidden: int = 64
    pretrain_steps: int = 600
    finetune_steps: int = 200
    scratch_steps: int = 600
    lr: float = 3e-3
    batch: int = 64
    tasks: str = "partition"  # "partition": binary splits of the digits; "relabel": permutations

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def digits(seed: int):
    """(train, test) splits of the digits as float32 pixels in [0, 1] and integer labels."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    return (X[order[:cut]], y[order[:cut]]), (X[order[cut:]], y[order[cut:]])


def make_mlp(hidden: int = 64) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.GELU(), torch.nn.Linear(hidden, 10))


def task_permutation(seed: int, task: int, kind: str = "partition") -> torch.Tensor:
    """Task ``task``'s label map of the ten digits (task -1: the identity, the pre-training).

    "partition": a random split of the digits into two halves (labels 0 and 1); "relabel": a
    random permutation of the ten labels."""
    if task < 0:
        return torch.arange(10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(10_000 * (seed + 1) + task))
    if kind == "relabel":
        return perm
    if kind == "partition":
        return (perm >= 5).long()
    raise ValueError(f"unknown task kind {kind!r}; expected 'partition' or 'relabel'")


def train(model, opt, data, steps: int, batch: int, generator, after_step=None) -> float:
    """Cross-entropy training; returns seconds per step."""
    X, y = data
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=generator)
        loss_fn(model(X[idx]), y[idx]).backward()
        opt.step()
        if after_step is not None:
            after_step()
        opt.zero_grad()
    return (time.perf_counter() - start) / max(steps, 1)


def accuracy(model, data) -> float:
    X, y = data
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def relabelled(data, perm):
    return data[0], perm[data[1]]


@dataclass
class Zoo:
    """Paths and task ids of a built zoo."""

    root: Path
    config: ZooConfig
    base: Path
    finetuned: List[Path]          # analysis models (tasks held_out ..)
    finetuned_tasks: List[int]
    held_out: List[Path]           # fine-tuned on tasks 0 .. held_out-1
    held_out_tasks: List[int]
    scratch: List[Path]
    scratch_tasks: List[int]
    seconds: float                 # training time (0 when read from the cache)

    def load(self, path: Path) -> Dict[str, torch.Tensor]:
        f = SafetensorsFile(path)
        return {k: f.get(k) for k in f.keys()}

    def model(self, path: Path) -> torch.nn.Sequential:
        m = make_mlp(self.config.hidden)
        m.load_state_dict(self.load(path))
        return m


def default_cache() -> Path:
    return Path(os.environ.get("UNISUB_CACHE", Path.home() / ".cache" / "unisub")) / "demo"


def build_zoo(config: ZooConfig, cache: Path = None, log=print) -> Zoo:
    """Train (or read from the cache) the base model and both zoos."""
    root = Path(cache or default_cache()) / f"zoo-{config.key()}"
    c = config
    held = list(range(c.held_out))
    ft_tasks = list(range(c.held_out, c.held_out + c.finetuned))
    sc_tasks = list(range(c.held_out, c.held_out + c.scratch))
    zoo = Zoo(root, c, root / "base.safetensors",
              [root / "finetuned" / f"task{t:03d}.safetensors" for t in ft_tasks], ft_tasks,
              [root / "held_out" / f"task{t:03d}.safetensors" for t in held], held,
              [root / "scratch" / f"task{t:03d}.safetensors" for t in sc_tasks], sc_tasks, 0.0)
    marker = root / "complete.json"
    if marker.exists() and json.loads(marker.read_text()).get("format") == ZOO_FORMAT:
        log(f"zoo: read from the cache {root}")
        return zoo
    start = time.perf_counter()
    torch.set_num_threads(1)  # tiny models: threads cost more than they give on 2 cores
    for sub in ("finetuned", "held_out", "scratch"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    train_data, _ = digits(c.seed)

    def save(model, path, task):
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp,
                  metadata={"task": str(task),
                                                       "label_map": json.dumps(task_permutation(c.seed, task, c.tasks).tolist())})
        tmp.replace(path)  # a model is either whole or absent: an interrupted build resumes

    if not zoo.base.exists():
        torch.manual_seed(c.seed)
        base = make_mlp(c.hidden)
        train(base, torch.optim.AdamW(base.parameters(), lr=c.lr), train_data, c.pretrain_steps, c.batch,
              torch.Generator().manual_seed(c.seed))
        save(base, zoo.base, -1)
    base_state = zoo.load(zoo.base)
    jobs = [(p, t, True) for p, t in zip(zoo.finetuned + zoo.held_out, ft_tasks + held)]
    jobs += [(p, t, False) for p, t in zip(zoo.scratch, sc_tasks)]
    todo = [j for j in jobs if not j[0].exists()]
    log(f"zoo: training {len(todo)} models ({c.finetune_steps} fine-tuning / {c.scratch_steps} from-scratch steps each)")
    every = max(1, len(todo) // 10)  # about ten progress lines, each with an estimate of the rest
    loop_start = time.perf_counter()
    for i, (path, task, from_base) in enumerate(todo):
        if i and i % every == 0:
            elapsed = time.perf_counter() - loop_start
            log(f"zoo: {i}/{len(todo)} models trained in {elapsed:.0f} s, about "
                f"{elapsed / i * (len(todo) - i):.0f} s to go")
        torch.manual_seed(c.seed * 100_003 + task * 7 + (0 if from_base else 1))
        model = make_mlp(c.hidden)
        if from_base:
            model.load_state_dict(base_state)
        data = relabelled(train_data, task_permutation(c.seed, task, c.tasks))
        train(model, torch.optim.AdamW(model.parameters(), lr=c.lr), data,
              c.finetune_steps if from_base else c.scratch_steps, c.batch,
              torch.Generator().manual_seed(c.seed + 31 * task + (0 if from_base else 17)))
        save(model, path, task)
    marker.write_text(json.dumps({"format": ZOO_FORMAT, "config": asdict(c)}))
    zoo.seconds = time.perf_counter() - start
    log(f"zoo: trained in {zoo.seconds:.1f} s, cached in {root}")
    return zoo


def task_data(zoo: Zoo, task: int) -> Tuple[tuple, tuple]:
    train_data, test_data = digits(zoo.config.seed)
    perm = task_permutation(zoo.config.seed, task, zoo.config.tasks)
    return relabelled(train_data, perm), relabelled(test_data, perm)
