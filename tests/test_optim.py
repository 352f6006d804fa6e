"""Optimizers and learning-rate schedules: parameter groups, LAMB arithmetic, schedule values, resuming."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from ipu_groupbert.config import load_config
from ipu_groupbert.optim import (
    Lamb,
    ScheduleMultiplier,
    build_lr_scheduler,
    build_optimizer,
    clip_grad_norm,
    learning_rates,
    split_parameters,
)


def training_config(*overrides: str):
    return load_config("groupbert_tiny", list(overrides)).training


def tiny_pretraining_model(model_type: str) -> nn.Module:
    """A real two-layer pre-training model of this project (tied MLM decoder)."""
    from ipu_groupbert.models import BertForPreTraining, GroupBertForPreTraining, model_config_from_dict

    config = load_config(f"{model_type}_tiny", ["--vocab-size", "512"])
    model_config = model_config_from_dict({"model_type": model_type, **config.model_config_dict()})
    model_class = GroupBertForPreTraining if model_type == "groupbert" else BertForPreTraining
    torch.manual_seed(0)
    return model_class(model_config)


# ---------------------------------------------------------------------------------------------
# Parameter groups


@pytest.mark.parametrize("model_type", ["groupbert", "bert"])
def test_parameter_split_by_rank(model_type):
    model = tiny_pretraining_model(model_type)
    split = split_parameters(model)
    decay_names = {name for name, _ in split.decay}
    no_decay_names = {name for name, _ in split.no_decay}
    assert all(p.ndim >= 2 for _, p in split.decay)
    assert all(p.ndim < 2 for _, p in split.no_decay)
    assert any("word_embeddings" in name for name in decay_names)
    assert any(name.endswith("bias") for name in no_decay_names)
    assert any("LayerNorm" in name or "norm" in name.lower() for name in no_decay_names)
    assert not decay_names & no_decay_names


@pytest.mark.parametrize("model_type", ["groupbert", "bert"])
def test_tied_parameters_appear_once(model_type):
    model = tiny_pretraining_model(model_type)
    split = split_parameters(model)
    ids = [id(p) for _, p in split.decay + split.no_decay]
    assert len(ids) == len(set(ids))
    unique = {id(p) for p in model.parameters()}
    assert set(ids) == unique
    decoder = model.get_output_embeddings().weight
    assert decoder is model.get_input_embeddings().weight
    assert sum(p is decoder for _, p in split.decay) == 1


def test_frozen_parameters_left_out():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    split = split_parameters(model)
    assert [name for name, _ in split.decay] == []
    assert [name for name, _ in split.no_decay] == ["0.bias", "1.weight", "1.bias"]


def test_no_trainable_parameters_rejected():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, training_config())


@pytest.mark.parametrize("name, expected_class", [("LAMB", Lamb), ("LAMBNoBiasCorrection", Lamb),
                                                  ("AdamW", torch.optim.AdamW)])
def test_build_optimizer_groups(name, expected_class):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    training = training_config("--optimizer", name, "--weight-decay", "0.05", "--learning-rate", "0.002",
                               "--adam-beta1", "0.8", "--adam-beta2", "0.99", "--adam-epsilon", "1e-8")
    optimizer = build_optimizer(model, training)
    assert type(optimizer) is expected_class
    decay, no_decay = optimizer.param_groups
    assert decay["param_names"] == ["0.weight", "1.weight"]
    assert no_decay["param_names"] == ["1.bias", "2.weight", "2.bias"]
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    assert decay["trust_ratio"] is True
    assert no_decay["trust_ratio"] is False
    for group in optimizer.param_groups:
        assert group["lr"] == 0.002
        assert group["betas"] == (0.8, 0.99)
        assert group["eps"] == 1e-8
    if expected_class is Lamb:
        assert decay["bias_correction"] is (name == "LAMB")


# ---------------------------------------------------------------------------------------------
# LAMB arithmetic


def lamb_reference(weight, grad, lr, beta1, beta2, eps, weight_decay, bias_correction, trust_ratio):
    """One LAMB step from zero moments, in float64 Python arithmetic."""
    m = [(1 - beta1) * g for g in grad]
    v = [(1 - beta2) * g * g for g in grad]
    if bias_correction:
        m = [x / (1 - beta1) for x in m]
        v = [x / (1 - beta2) for x in v]
    update = [mi / (math.sqrt(vi) + eps) + weight_decay * w for mi, vi, w in zip(m, v, weight)]
    ratio = 1.0
    if trust_ratio:
        w_norm = math.sqrt(sum(w * w for w in weight))
        u_norm = math.sqrt(sum(u * u for u in update))
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return [w - lr * ratio * u for w, u in zip(weight, update)]


def one_step(weight, grad, **options):
    param = nn.Parameter(torch.tensor(weight, dtype=torch.float64))
    param.grad = torch.tensor(grad, dtype=torch.float64)
    optimizer = Lamb([param], **options)
    optimizer.step()
    return param.detach()


def test_lamb_matches_hand_computation():
    weight = [[1.0, -2.0], [0.5, 3.0]]
    grad = [[0.1, 0.4], [-0.3, 0.02]]
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True, trust_ratio=True)
    result = one_step(weight, grad, **options)
    flat_weight = [x for row in weight for x in row]
    flat_grad = [x for row in grad for x in row]
    expected = lamb_reference(flat_weight, flat_grad, 0.01, 0.9, 0.999, 1e-6, 0.01, True, True)
    assert result.flatten().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # First step with bias correction: m_hat / sqrt(v_hat) = sign(g), so the update norm is about
    # sqrt(4) = 2 before weight decay, and the trust ratio scales it to about ||w||.
    step_norm = torch.linalg.vector_norm(result - torch.tensor(weight, dtype=torch.float64)).item()
    w_norm = math.sqrt(sum(x * x for x in flat_weight))
    assert step_norm == pytest.approx(0.01 * w_norm, rel=1e-9)


def test_lamb_second_step_uses_moments():
    param = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    optimizer = Lamb([param], lr=0.1, betas=(0.5, 0.75), eps=1e-8, weight_decay=0.0)
    grads = [torch.tensor([[1.0, -1.0], [2.0, 0.5]], dtype=torch.float64),
             torch.tensor([[0.5, 1.0], [-1.0, 0.5]], dtype=torch.float64)]
    w = param.detach().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        param.grad = g
        optimizer.step()
        m = 0.5 * m + 0.5 * g
        v = 0.75 * v + 0.25 * g * g
        update = (m / (1 - 0.5**t)) / ((v / (1 - 0.75**t)).sqrt() + 1e-8)
        w = w - 0.1 * (w.norm() / update.norm()) * update
    torch.testing.assert_close(param.detach(), w, rtol=1e-12, atol=1e-14)


def test_lamb_one_dimensional_takes_adam_update():
    weight, grad = [0.5, -1.0, 2.0], [0.2, -0.1, 0.05]
    result = one_step(weight, grad, lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, trust_ratio=False)
    expected = lamb_reference(weight, grad, 0.01, 0.9, 0.999, 1e-6, 0.0, True, False)
    assert result.tolist() == pytest.approx(expected, rel=1e-12)
    # Bias-corrected first Adam step: each element moves by lr x sign(g), up to epsilon.
    assert (torch.tensor(weight, dtype=torch.float64) - result).tolist() == pytest.approx(
        [0.01, -0.01, 0.01], rel=1e-4)


def test_lamb_zero_weight_uses_ratio_one():
    result = one_step([[0.0, 0.0]], [[0.3, -0.6]], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    expected = lamb_reference([0.0, 0.0], [0.3, -0.6], 0.1, 0.9, 0.999, 1e-6, 0.01, True, True)
    assert result.flatten().tolist() == pytest.approx(expected, rel=1e-12)
    assert result.flatten().tolist() == pytest.approx([-0.1, 0.1], rel=1e-4)


def test_lamb_zero_gradient_leaves_weight():
    result = one_step([[1.0, 2.0]], [[0.0, 0.0]], lr=0.1, weight_decay=0.0)
    assert result.tolist() == [[1.0, 2.0]]


def test_no_bias_correction_first_step_differs():
    weight, grad = [0.5, -1.0, 2.0], [0.2, -0.1, 0.05]
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, trust_ratio=False)
    corrected = one_step(weight, grad, bias_correction=True, **options)
    uncorrected = one_step(weight, grad, bias_correction=False, **options)
    start = torch.tensor(weight, dtype=torch.float64)
    # Without correction the first update is (1 - beta1) g / (sqrt(1 - beta2) |g| + eps):
    # 0.1 / sqrt(0.001), about 3.16 times the corrected step, in the same direction.
    ratio = ((start - uncorrected) / (start - corrected)).tolist()
    assert ratio == pytest.approx([0.1 / math.sqrt(0.001)] * 3, rel=1e-3)
    expected = lamb_reference(weight, grad, 0.01, 0.9, 0.999, 1e-6, 0.0, False, False)
    assert uncorrected.tolist() == pytest.approx(expected, rel=1e-12)


def test_no_bias_correction_trust_ratio_step():
    weight, grad = [[0.5, -1.0], [2.0, 1.0]], [[0.2, -0.1], [0.05, 0.3]]
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, trust_ratio=True)
    corrected = one_step(weight, grad, bias_correction=True, **options)
    uncorrected = one_step(weight, grad, bias_correction=False, **options)
    # The trust ratio normalises the update to lr x ||w||, so only epsilon's share differs.
    torch.testing.assert_close(corrected, uncorrected, rtol=1e-4, atol=1e-6)


def test_lamb_low_precision_keeps_fp32_state():
    param = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16))
    param.grad = torch.tensor([[0.1, -0.2], [0.3, 0.4]], dtype=torch.bfloat16)
    optimizer = Lamb([param], lr=0.01)
    optimizer.step()
    state = optimizer.state[param]
    assert state["exp_avg"].dtype == torch.float32
    assert state["exp_avg_sq"].dtype == torch.float32
    assert param.dtype == torch.bfloat16


def test_lamb_rejects_invalid_settings():
    params = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="invalid learning rate"):
        Lamb(params, lr=0.0)
    with pytest.raises(ValueError, match="invalid betas"):
        Lamb(params, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="invalid weight decay"):
        Lamb(params, weight_decay=-0.1)


def test_lamb_rejects_sparse_gradients():
    embedding = nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        Lamb(embedding.parameters()).step()


@pytest.mark.parametrize("name", ["LAMB", "LAMBNoBiasCorrection", "AdamW"])
def test_optimizer_reduces_regression_loss(name):
    torch.manual_seed(0)
    inputs = torch.randn(64, 8)
    targets = inputs @ torch.randn(8, 1) + 0.5
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    lr = "0.001" if name == "AdamW" else "0.005"
    optimizer = build_optimizer(model, training_config("--optimizer", name, "--learning-rate", lr))
    losses = []
    for _ in range(200):
        loss = nn.functional.mse_loss(model(inputs), targets)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.2 * losses[0]


# ---------------------------------------------------------------------------------------------
# Schedules


def used_rates(training, total_steps, resume_after=None, model=None):
    """Learning rate used by each step, optionally rebuilding optimizer and scheduler after
    `resume_after` completed steps and loading their state dicts through torch.save/torch.load."""
    torch.manual_seed(0)
    model = model or nn.Linear(3, 2)
    optimizer = build_optimizer(model, training)
    scheduler = build_lr_scheduler(optimizer, training, total_steps)
    rates = []
    for step in range(total_steps):
        if step == resume_after:
            buffer = io.BytesIO()
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=True)
            optimizer = build_optimizer(model, training)
            scheduler = build_lr_scheduler(optimizer, training, total_steps)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        rates.append(optimizer.param_groups[0]["lr"])
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return rates


LINEAR_10 = ("--lr-schedule", "linear", "--lr-warmup", "0", "--learning-rate", "1e-5", "--training-steps", "10")


def test_linear_schedule_uninterrupted_values():
    rates = used_rates(training_config(*LINEAR_10), 10)
    assert rates == pytest.approx([1e-5 * (1 - t / 10) for t in range(10)], rel=1e-12)
    assert rates[4] == pytest.approx(6e-6, rel=1e-12)
    assert rates[5] == pytest.approx(5e-6, rel=1e-12)


def test_linear_schedule_resumed_at_step_five():
    training = training_config(*LINEAR_10)
    # Steps are numbered from 1 here: steps 1-4 ran (1e-5 ... 7e-6), the run stopped, and the
    # resumed run's first two steps, 5 and 6, use 6e-6 and then 5e-6.
    resumed = used_rates(training, 10, resume_after=4)
    assert resumed[4] == pytest.approx(6e-6, rel=1e-12)
    assert resumed[5] == pytest.approx(5e-6, rel=1e-12)
    assert resumed == pytest.approx(used_rates(training, 10), rel=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "power_warmup_linear", "polynomial", "constant"])
@pytest.mark.parametrize("optimizer", ["LAMB", "AdamW"])
def test_resume_matches_uninterrupted(schedule, optimizer):
    training = training_config("--lr-schedule", schedule, "--lr-warmup", "0.3", "--training-steps", "12",
                               "--optimizer", optimizer, "--lr-decay-power", "2")
    expected = used_rates(training, 12)
    for resume_after in (1, 5, 11):
        assert used_rates(training, 12, resume_after=resume_after) == pytest.approx(expected, rel=1e-12)


def test_resumed_weights_match_uninterrupted():
    training = training_config("--optimizer", "LAMB", "--lr-schedule", "power_warmup_linear", "--lr-warmup", "0.2",
                               "--learning-rate", "0.01", "--training-steps", "10")
    straight, resumed = nn.Linear(3, 2), nn.Linear(3, 2)
    resumed.load_state_dict(straight.state_dict())
    used_rates(training, 10, model=straight)
    used_rates(training, 10, resume_after=6, model=resumed)
    torch.testing.assert_close(resumed.weight, straight.weight, rtol=0, atol=0)
    torch.testing.assert_close(resumed.bias, straight.bias, rtol=0, atol=0)


def test_warmup_steps_rounded():
    multiplier = ScheduleMultiplier("linear", total_steps=10, warmup_steps=3)
    assert [multiplier(t) for t in range(4)] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    training = training_config("--lr-warmup", "0.25", "--training-steps", "10", "--lr-schedule", "linear")
    rates = learning_rates(training, 10)
    # 0.25 x 10 = 2.5 rounds up to 3 warm-up steps.
    assert rates[2] == pytest.approx(training.learning_rate * 2 / 3)
    assert rates[3] == pytest.approx(training.learning_rate)
    assert rates[4] == pytest.approx(training.learning_rate * 6 / 7)


def test_linear_with_warmup_values():
    multiplier = ScheduleMultiplier("linear", total_steps=100, warmup_steps=10)
    assert multiplier(0) == 0.0
    assert multiplier(5) == pytest.approx(0.5)
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(55) == pytest.approx(0.5)
    assert multiplier(99) == pytest.approx(1 / 90)
    assert multiplier(100) == 0.0
    assert multiplier(150) == 0.0


def test_power_warmup_linear_values():
    multiplier = ScheduleMultiplier("power_warmup_linear", total_steps=100, warmup_steps=16, warmup_exponent=0.5)
    assert multiplier(0) == 0.0
    assert multiplier(4) == pytest.approx(0.5)
    assert multiplier(9) == pytest.approx(0.75)
    assert multiplier(16) == pytest.approx(1.0)
    assert multiplier(58) == pytest.approx(0.5)


def test_polynomial_values():
    multiplier = ScheduleMultiplier("polynomial", total_steps=30, warmup_steps=10, warmup_exponent=0.5,
                                    decay_power=2.0)
    assert multiplier(1) == pytest.approx(math.sqrt(0.1))
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(20) == pytest.approx(0.25)
    assert multiplier(25) == pytest.approx(0.0625)


def test_constant_values():
    multiplier = ScheduleMultiplier("constant", total_steps=50, warmup_steps=5, warmup_exponent=0.5)
    assert multiplier(0) == 0.0
    assert multiplier(2) == pytest.approx(0.4)  # constant warms up linearly; the exponent applies to power schedules
    assert multiplier(5) == 1.0
    assert multiplier(49) == 1.0
    no_warmup = ScheduleMultiplier("constant", total_steps=50, warmup_steps=0)
    assert no_warmup(0) == 1.0


def test_linear_exponent_ignored_for_linear():
    training = training_config("--lr-schedule", "linear", "--lr-warmup", "0.5", "--training-steps", "8",
                               "--lr-warmup-exponent", "0.5")
    rates = learning_rates(training, 8)
    assert rates[2] == pytest.approx(training.learning_rate * 0.5)


def test_full_warmup_no_decay():
    multiplier = ScheduleMultiplier("linear", total_steps=4, warmup_steps=4)
    assert [multiplier(t) for t in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.0])


def test_schedule_rejects_invalid_settings():
    with pytest.raises(ValueError, match="unknown lr_schedule 'cosine'"):
        ScheduleMultiplier("cosine", total_steps=10, warmup_steps=0)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        ScheduleMultiplier("linear", total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        ScheduleMultiplier("linear", total_steps=0, warmup_steps=0)


def test_shipped_recipe_schedule_shape():
    config = load_config("groupbert_base")
    rates = learning_rates(config, config.training.training_steps)
    warmup = config.derived().warmup_steps
    assert max(rates) == pytest.approx(0.012)
    assert rates.index(max(rates)) == warmup
    assert rates[warmup // 4] == pytest.approx(0.012 * math.sqrt((warmup // 4) / warmup))
    assert rates[-1] == pytest.approx(0.012 / (config.training.training_steps - warmup))


# ---------------------------------------------------------------------------------------------
# Gradient clipping


def test_clip_grad_norm_clips_and_measures():
    model = nn.Linear(2, 1, bias=True)
    optimizer = build_optimizer(model, training_config())
    model.weight.grad = torch.tensor([[3.0, 0.0]])
    model.bias.grad = torch.tensor([4.0])
    measured = clip_grad_norm(optimizer, None)
    assert measured.item() == pytest.approx(5.0)
    assert model.bias.grad.item() == 4.0
    norm = clip_grad_norm(optimizer, 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert model.weight.grad[0].tolist() == pytest.approx([0.6, 0.0], rel=1e-5)
    assert model.bias.grad.tolist() == pytest.approx([0.8], rel=1e-5)


def test_clip_grad_norm_leaves_nonfinite_gradients():
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, training_config())
    model.weight.grad = torch.tensor([[float("inf"), 1.0]])
    model.bias.grad = torch.tensor([2.0])
    norm = clip_grad_norm(optimizer, 1.0)
    assert not torch.isfinite(norm)
    assert model.bias.grad.item() == 2.0
    assert model.weight.grad[0, 1].item() == 1.0


def test_clip_grad_norm_without_gradients():
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, training_config())
    assert clip_grad_norm(optimizer, 1.0).item() == 0.0
