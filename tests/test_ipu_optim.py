"""PopTorch optimizer construction, against the PopTorch test double.

They verify which poptorch.optim class is built with which arguments and parameter groups, not
the optimizer's arithmetic on IPUs.
"""

import pytest
import torch

from ipu_groupbert.config import load_config
from ipu_groupbert.execution.ipu_optim import build_ipu_optimizer
from ipu_groupbert.models import build_model, model_config_from_dict
from ipu_groupbert.optim import build_lr_scheduler, split_parameters
from poptorch_double import poptorch_double  # noqa: F401  (fixture)

SMALL = ["--hidden-size", "64", "--num-attention-heads", "2", "--intermediate-size", "256", "--vocab-size", "1024",
         "--num-hidden-layers", "2", "--layers-per-ipu", "-1", "--ipus-per-replica", "2",
         "--matmul-proportion", "0.2"]


def _model(config):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"model_type": "groupbert", **config.model_config_dict()}), "pretraining")


def _ids(parameters):
    return {id(p) for p in parameters}


@pytest.mark.parametrize(("name", "bias_correction"), [("LAMB", True), ("LAMBNoBiasCorrection", False)])
def test_lamb_arguments(name, bias_correction, poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL + ["--optimizer", name])
    model = _model(config)
    optimizer = build_ipu_optimizer(model, config.training, poptorch)

    assert isinstance(optimizer, poptorch.optim.LAMB)
    (class_name, arguments), = poptorch_double.optimizers
    assert class_name == "LAMB"
    assert arguments["bias_correction"] is bias_correction
    assert arguments["lr"] == 0.012
    assert arguments["betas"] == (0.9, 0.999)
    assert arguments["eps"] == 1e-6
    assert arguments["loss_scaling"] == 512.0
    assert arguments["accum_type"] == torch.float16
    assert arguments["first_order_momentum_accum_type"] == torch.float32
    assert arguments["second_order_momentum_accum_type"] == torch.float32
    assert optimizer.variable_attrs.isConstant("weight_decay")
    assert optimizer.variable_attrs.isConstant("max_weight_norm")


def test_lamb_bias_group_has_no_trust_ratio(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL)
    model = _model(config)
    optimizer = build_ipu_optimizer(model, config.training, poptorch)
    decay_group, no_decay_group = optimizer.param_groups
    split = split_parameters(model)

    assert _ids(decay_group["params"]) == _ids(p for _, p in split.decay)
    assert decay_group["weight_decay"] == 0.01
    assert decay_group["max_weight_norm"] is None  # the trust ratio applies
    assert _ids(no_decay_group["params"]) == _ids(p for _, p in split.no_decay)
    assert all(p.ndim == 1 for p in no_decay_group["params"])
    assert no_decay_group["weight_decay"] == 0.0
    assert no_decay_group["max_weight_norm"] == 0.0  # trust ratio 1: a plain Adam step


def test_tied_weights_optimized_once(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL)
    model = _model(config)
    optimizer = build_ipu_optimizer(model, config.training, poptorch)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(parameters) == len(_ids(parameters)) == len(list(model.parameters()))
    assert id(model.bert.embeddings.word_embeddings.weight) in _ids(parameters)


def test_adamw_arguments(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL + ["--optimizer", "AdamW", "--learning-rate", "8e-4",
                                                         "--max-grad-norm", "1.0"])
    optimizer = build_ipu_optimizer(_model(config), config.training, poptorch)
    assert isinstance(optimizer, poptorch.optim.AdamW)
    (class_name, arguments), = poptorch_double.optimizers
    assert class_name == "AdamW"
    assert arguments["bias_correction"] is True
    assert arguments["max_grad_norm"] == 1.0
    assert arguments["lr"] == 8e-4
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    assert all("max_weight_norm" not in group for group in optimizer.param_groups)


def test_fp32_without_loss_scaling(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL + ["--precision", "fp32"])
    build_ipu_optimizer(_model(config), config.training, poptorch)
    (_, arguments), = poptorch_double.optimizers
    assert arguments["loss_scaling"] == 1.0
    assert arguments["accum_type"] == torch.float32


def test_lamb_with_clipping_rejected(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL + ["--max-grad-norm", "1.0"])
    with pytest.raises(NotImplementedError, match="max_grad_norm 1.0 with LAMB is not supported on IPUs"):
        build_ipu_optimizer(_model(config), config.training, poptorch)


def test_schedule_drives_learning_rate(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", SMALL + ["--training-steps", "10", "--lr-warmup", "0.4"])
    optimizer = build_ipu_optimizer(_model(config), config.training, poptorch)
    scheduler = build_lr_scheduler(optimizer, config.training, 10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.step()
    # power_warmup_linear: (step / 4) ** 0.5 for 4 steps, then linear decay to 0 after step 10.
    expected = [0.012 * (t / 4) ** 0.5 for t in range(4)] + [0.012 * (1 - (t - 4) / 6) for t in range(4, 10)]
    assert rates == pytest.approx(expected)
    assert all(group["lr"] == pytest.approx(0.0) for group in optimizer.param_groups)
