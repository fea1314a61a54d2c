"""Serving every adapter of a zoo from one base model (MultiTaskLoRA), against PEFT running each
exported adapter; training a new task's coefficients with SubspaceLoRALinear. Outputs are float32:
bound 1e-4 relative on the hidden states (float32 forward through 6 layers; the served and the
PEFT models apply the same ΔW in a different association)."""
import copy

import pytest
import torch

import lora_zoo
from lora_zoo import single_thread  # noqa: F401  (autouse)
from unisub.lora import LoraZoo, MultiTaskLoRA, SharedSubspaceLinear, add_task, attach_trainable, compress, export


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def zoo():
    lora_zoo.require()
    with lora_zoo.one_thread():
        return compress(lora_zoo.zoo_paths(), energy=0.8)


def peft_output(folder, batch):
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(lora_zoo.base_model()), str(folder)).eval()
    with torch.no_grad():
        return model(**batch).last_hidden_state


@torch.no_grad()
def test_served_outputs_equal_each_exported_adapter(zoo, tmp_path):
    base = copy.deepcopy(lora_zoo.base_model())
    weights = {n: p for n, p in base.named_parameters()}
    served = MultiTaskLoRA(base, zoo).eval()
    assert all(p is weights[n] for n, p in base.named_parameters() if n in weights)  # no copy of the base
    batch = lora_zoo.tokens(0, batch=3, length=6)
    outs = {}
    for name in zoo.names[:3]:
        export(zoo, name, tmp_path / name, dtype="float32")
        outs[name] = served.set_task(name)(**batch).last_hidden_state
        assert rel(outs[name], peft_output(tmp_path / name, batch)) <= 1e-4, name
    mixed = served.set_task(zoo.names[:3])(**batch).last_hidden_state  # one task per row
    for row, name in enumerate(zoo.names[:3]):
        assert rel(mixed[row], outs[name][row]) <= 1e-5
    plain = lora_zoo.base_model()(**batch).last_hidden_state
    assert torch.allclose(served.set_task(None)(**batch).last_hidden_state, plain, atol=1e-5)
    model = served.remove()
    assert not any(isinstance(m, SharedSubspaceLinear) for m in model.modules())
    assert torch.equal(model(**batch).last_hidden_state, plain)


@torch.no_grad()
def test_layer_compiles_and_switches_task_without_recompiling(zoo):
    base = copy.deepcopy(lora_zoo.base_model())
    served = MultiTaskLoRA(base, zoo)
    mod = next(iter(zoo.modules))
    layer = base.get_submodule(mod)
    x = torch.randn(2, 5, layer.base.in_features)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    try:
        for t in (0, 1, None):  # None: the zero core (the base layer alone)
            served.set_task(t)
            mb = zoo.modules[mod]
            ref = layer.base(x).double() + (0 if t is None else x.double() @ mb.reconstruct(t).T)
            assert rel(compiled(x).double(), ref) <= 1e-5
            if t == 0:
                torch.compiler.set_stance("fail_on_recompile")  # switching tasks must not recompile
    finally:
        torch.compiler.set_stance("default")


def test_train_a_new_task_in_the_subspace_and_save_it(zoo, tmp_path):
    model = copy.deepcopy(lora_zoo.base_model())
    params = attach_trainable(model, zoo, rank=2, alpha=4, generator=torch.Generator().manual_seed(0))
    assert all(p.requires_grad for p in params) and sum(p.numel() for p in params) < 20000
    opt = torch.optim.Adam(params, lr=1e-2)
    batch = lora_zoo.tokens(5, batch=2, length=6)
    for _ in range(2):
        loss = model(**batch).last_hidden_state.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = model(**batch).last_hidden_state
    new = add_task(zoo, model, "trained")
    new.save(tmp_path / "zoo.safetensors")
    new = LoraZoo.load(tmp_path / "zoo.safetensors")
    assert new.names[-1] == "trained" and new.errors()[-1]["relative_error"] == 0
    with torch.no_grad():
        served = MultiTaskLoRA(model, new).set_task("trained")
        assert rel(served(**batch).last_hidden_state, trained) <= 1e-5
        served.remove()
    export(new, "trained", tmp_path / "trained")
    assert rel(peft_output(tmp_path / "trained", batch), trained) <= 1e-4
