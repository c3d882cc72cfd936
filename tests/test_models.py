import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fl_dp.models import build_model, get_flat_params, num_params, set_flat_params


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("logreg", (30,), 2),
        ("logreg", (1, 28, 28), 10),
        ("cnn", (1, 28, 28), 10),
        ("cnn-tanh", (1, 28, 28), 10),
        ("dp-cnn", (1, 28, 28), 10),
        ("resnet20", (3, 32, 32), 10),
    ],
)
def test_models_are_opacus_compatible_and_give_logits(name, shape, classes):
    model = build_model(name, shape, classes)
    assert ModuleValidator.validate(model, strict=False) == []
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 1 if classes == 2 else classes)


@pytest.mark.parametrize("name", ["cnn", "cnn-tanh", "dp-cnn"])
def test_per_sample_gradients_of_cnn_match_a_loop(name):
    model = build_model(name, (1, 28, 28), 10)
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9])
    gsm = GradSampleModule(model, loss_reduction="sum")
    torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    per_sample = torch.cat([p.grad_sample.flatten(1) for p in model.parameters()], 1)
    for i in range(3):
        model.zero_grad()
        loop_model = build_model(name, (1, 28, 28), 10)
        torch.nn.functional.cross_entropy(loop_model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        reference = torch.cat([p.grad.flatten() for p in loop_model.parameters()])
        assert torch.allclose(per_sample[i], reference, atol=1e-5)


def test_the_tanh_cnn_is_the_cnn_with_bounded_activations():
    relu, tanh = build_model("cnn", (1, 28, 28), 10, seed=3), build_model("cnn-tanh", (1, 28, 28), 10, seed=3)
    # same layers and the same seeded initial weights: only the activation differs
    assert torch.equal(get_flat_params(relu), get_flat_params(tanh))
    activations = [type(m).__name__ for m in tanh.features if type(m).__name__ in ("ReLU", "Tanh")]
    assert activations == ["Tanh", "Tanh"]
    x = 100 * torch.randn(2, 1, 28, 28)
    assert not torch.allclose(relu(x), tanh(x))


def test_dp_cnn_is_the_26k_network_of_the_dp_sgd_papers():
    # Zhu and Blaschko's Table 2 lists DP-CNN/S on Fashion-MNIST with 26K parameters
    model = build_model("dp-cnn", (1, 28, 28), 10)
    assert num_params(model) == 16 * 8 * 8 + 16 + 32 * 16 * 4 * 4 + 32 + 512 * 32 + 32 + 32 * 10 + 10 == 26_010
    assert {type(m).__name__ for m in model.modules()} >= {"Tanh"} and not any("Norm" in type(m).__name__ for m in model.modules())
    with pytest.raises(ValueError, match="28x28"):
        build_model("dp-cnn", (3, 32, 32), 10)


def test_resnet20_has_the_usual_size():
    # 0.27M parameters in the BatchNorm original; GroupNorm has the same affine parameters
    assert 260_000 < num_params(build_model("resnet20", (3, 32, 32), 10)) < 280_000


def test_flat_parameter_round_trip_and_seeded_init():
    a = build_model("cnn", (1, 28, 28), 10, seed=1)
    b = build_model("cnn", (1, 28, 28), 10, seed=1)
    assert torch.equal(get_flat_params(a), get_flat_params(b))
    flat = torch.randn(num_params(a))
    set_flat_params(a, flat)
    assert torch.equal(get_flat_params(a), flat)
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(get_flat_params(a), flat)  # the model does not alias the vector it was given
    with pytest.raises(ValueError, match="entries"):
        set_flat_params(a, torch.zeros(3))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit", (1, 28, 28), 10)
