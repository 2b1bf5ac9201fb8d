"""Pruned weights stay exactly 0.0 through every kind of training step."""

import copy
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_module import ADAPTER_NAMES, TinyAdapterModel, tiny_batches

import sparseadapter as sa
from sparseadapter import masks as mask_engine


def _sparse_model(method="snip", sparsity=0.5):
    model = TinyAdapterModel(hidden=16, bottleneck=8)
    sa.sparsify(model, sa.SparsityConfig(method=method, sparsity=sparsity), batches=tiny_batches())
    return model


def _pruned_values(model):
    named = dict(model.named_parameters())
    return torch.cat([named[n][~m].detach() for n, m in sa.get_masks(model).items()])


def _kept_changed(model, before):
    named = dict(model.named_parameters())
    return any(not torch.equal(named[n][m], before[n][m]) for n, m in sa.get_masks(model).items())


def _train(model, optimizer, steps=5, accumulate=1, clip=None, autocast=False):
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step, batch in enumerate(tiny_batches(n_batches=steps * accumulate, seed=7)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss / accumulate
        loss.backward()
        if (step + 1) % accumulate == 0:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()
    return before


OPTIMIZERS = {
    "adamw_wd": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"clip": 0.01}, {"accumulate": 3}, {"autocast": True}],
    ids=["plain", "clip", "accumulate", "bf16"],
)
def test_pruned_weights_stay_exactly_zero(optimizer, kwargs):
    model = _sparse_model()
    params = [p for p in model.parameters() if p.requires_grad]
    before = _train(model, OPTIMIZERS[optimizer](params), **kwargs)
    assert (_pruned_values(model) == 0.0).all()
    assert _kept_changed(model, before), "kept weights must still train"


def test_optimizer_state_stays_zero_at_pruned_positions():
    model = _sparse_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    _train(model, opt)
    named = dict(model.named_parameters())
    for name, mask in sa.get_masks(model).items():
        state = opt.state[named[name]]
        assert (state["exp_avg"][~mask] == 0).all() and (state["exp_avg_sq"][~mask] == 0).all()


def test_nan_gradient_at_pruned_position_does_not_leak():
    model = _sparse_model()
    name = ADAPTER_NAMES[0]
    param = dict(model.named_parameters())[name]
    mask = sa.get_masks(model)[name]
    loss = model(**tiny_batches(1)[0]).loss
    grad = torch.autograd.grad(loss + (param * torch.where(mask, 0.0, float("nan"))).sum(), param)
    assert torch.isfinite(grad[0]).all() and (grad[0][~mask] == 0).all()


class Drift(torch.optim.Optimizer):
    """Moves every weight whatever its gradient."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.5)


def test_an_optimizer_that_moves_zero_gradient_weights_is_corrected():
    model = _sparse_model()
    opt = Drift([p for p in model.parameters() if p.requires_grad])
    _train(model, opt, steps=2)
    assert (_pruned_values(model) == 0.0).all()


def test_step_hook_remasks_only_the_stepping_optimizers_parameters():
    model_a, model_b = _sparse_model(), _sparse_model(method="magnitude")
    opt_a = Drift([p for p in model_a.parameters() if p.requires_grad])
    opt_b = torch.optim.SGD([p for p in model_b.parameters() if p.requires_grad], lr=0.0)
    name = ADAPTER_NAMES[0]
    weight_b, pruned_b = dict(model_b.named_parameters())[name], ~sa.get_masks(model_b)[name]
    with torch.no_grad():
        weight_b[pruned_b] = 3.0  # a deliberate edit, outside any optimizer
    _train(model_a, opt_a, steps=1)
    assert (_pruned_values(model_a) == 0.0).all()
    assert (weight_b[pruned_b] == 3.0).all(), "stepping A must not touch B's weights"
    opt_b.step()
    assert (_pruned_values(model_b) == 0.0).all()


# Run in a fresh interpreter: masked models that other tests keep alive would keep the hook.
HOOK_LIFETIME = """
import gc
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks as hooks
from tiny_module import TinyAdapterModel, tiny_batches
import sparseadapter as sa
from sparseadapter import masks

calls = []
reapply = masks._reapply_stepped_masks
masks._reapply_stepped_masks = lambda *args: calls.append(1) or reapply(*args)

def engine_hooks():
    return [h for h in hooks.values() if h.__module__ in (masks.__name__, __name__)]

def sparse_model():
    model = TinyAdapterModel(hidden=16, bottleneck=8)
    sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.5))
    return model

def step(model):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    torch.optim.SGD(model.parameters(), lr=0.1).step()

assert engine_hooks() == [], "no masks, no hook"
model_a, model_b = sparse_model(), sparse_model()
assert len(engine_hooks()) == 1, "one hook for every mask set"
sa.remove_sparsity(model_a)
assert len(engine_hooks()) == 1, "B's masks are still live"
step(model_b)
assert len(calls) == 1
del model_b
gc.collect()
assert engine_hooks() == [], "the last mask set took the hook with it"
step(TinyAdapterModel())
assert len(calls) == 1, "an optimizer steps without the hook once no masks are live"
print("ok")
"""


def test_the_step_hook_lives_only_while_masks_do():
    package_root = Path(sa.__file__).parents[1]  # the sparseadapter this session imported
    path = os.pathsep.join([str(package_root), str(Path(__file__).parent)])
    done = subprocess.run(
        [sys.executable, "-c", HOOK_LIFETIME],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_what_an_optimizer_remasks_is_worked_out_once_and_follows_its_groups(monkeypatch):
    plans = []
    make_plan = mask_engine._make_plan
    monkeypatch.setattr(mask_engine, "_make_plan", lambda opt: plans.append(1) or make_plan(opt))
    gc.collect()
    gc.disable()  # a mask set of another test collected midway would count as a change
    try:
        model = _sparse_model()
        late = dict(model.named_parameters())[ADAPTER_NAMES[0]]
        opt = Drift([p for p in model.parameters() if p.requires_grad and p is not late])
        _train(model, opt, steps=3)
        assert len(plans) == 1
        opt.add_param_group({"params": [late]})
        _train(model, opt, steps=2)
        assert len(plans) == 2 and (_pruned_values(model) == 0.0).all()
        other = _sparse_model()  # a new mask set: plans are worked out again
        _train(model, opt, steps=1)
        assert len(plans) == 3 and (_pruned_values(model) == 0.0).all()
        del other
    finally:
        gc.enable()


def test_masks_follow_the_weights_to_another_dtype():
    model = _sparse_model().double()
    _train(model, Drift([p for p in model.parameters() if p.requires_grad]), steps=2)
    assert _pruned_values(model).dtype == torch.float64
    assert (_pruned_values(model) == 0.0).all()


def test_names_and_state_dict_keys_unchanged():
    plain = TinyAdapterModel(hidden=16, bottleneck=8)
    keys = list(plain.state_dict())
    names = [n for n, _ in plain.named_parameters()]
    sa.sparsify(plain, sa.SparsityConfig(method="magnitude", sparsity=0.5))
    assert list(plain.state_dict()) == keys
    assert [n for n, _ in plain.named_parameters()] == names


def test_remove_sparsity_stops_enforcement():
    model = _sparse_model()
    sa.remove_sparsity(model)
    assert sa.get_masks(model) == {}
    _train(model, Drift([p for p in model.parameters() if p.requires_grad]), steps=2)
    named = dict(model.named_parameters())
    assert all(named[n].count_nonzero() == named[n].numel() for n in ADAPTER_NAMES)


def test_hf_trainer_keeps_pruned_weights_zero(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _sparse_model()
    data = [
        {"input_ids": b["input_ids"][i], "labels": b["labels"][i]}
        for b in tiny_batches(4, seed=5)
        for i in range(4)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=0.05,
        weight_decay=0.1,
        max_grad_norm=1.0,
        gradient_accumulation_steps=2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(model=model, args=args, train_dataset=data).train()
    assert (_pruned_values(model) == 0.0).all()
    assert _kept_changed(model, before)  # it trained


def test_a_deep_copy_enforces_its_own_masks():
    model = _sparse_model()
    twin = copy.deepcopy(model)
    masks = sa.get_masks(twin)
    assert all(torch.equal(masks[n], m) for n, m in sa.get_masks(model).items())
    before = _train(twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1))
    assert not _pruned_values(twin).any() and _kept_changed(twin, before)
    assert not _pruned_values(model).any()
