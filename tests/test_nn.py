"""The convolutional building blocks: sizes for any image, the mirror of encoder and decoder, residual cells,
and every network serving one and two stochastic layers and both priors behind the model interface."""

import pytest
import torch
from torch import nn

from vaelab.config import ModelSpec
from vaelab.errors import VaelabError
from vaelab.kernels import Runtime, evaluation_decoder, training_kernel
from vaelab.models import build_model, reconstruct_means, sample_means
import torch.nn.functional as F

from vaelab.nn import ConvDecoder, ConvEncoder, ResidualCell, UpsamplingConv2d, resolutions, unfused
from vaelab.objectives import dreg, elbo, iwae


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (28, 28, [(28, 28), (14, 14), (7, 7)]),
        (32, 32, [(32, 32), (16, 16), (8, 8)]),
        (8, 8, [(8, 8)]),
        (27, 13, [(27, 13), (14, 7)]),
        (64, 48, [(64, 48), (32, 24), (16, 12), (8, 6)]),
    ],
)
def test_resolutions_halve_rounding_up_until_the_shorter_side_is_at_most_8(height, width, expected):
    assert resolutions(height, width) == expected


def _conv_output_size(size, layers):
    """The spatial size after the strided convolutions, by the convolution arithmetic (k=3, p=1)."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            size = tuple((s + 2 * 1 - 3) // layer.stride[0] + 1 for s in size)
    return size


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 12, 10), (1, 5, 7), (2, 64, 48)])
@pytest.mark.parametrize("residual", [False, True])
def test_encoder_and_decoder_handle_any_image_and_mirror_each_other(shape, residual):
    torch.manual_seed(0)
    encoder = ConvEncoder(shape, channels=4, depth=1, out_dim=6, residual=residual)
    decoder = ConvDecoder(3, shape, channels=4, depth=1, out_channels=5, residual=residual)
    pixels = shape[0] * shape[1] * shape[2]
    x = torch.rand(2, 3, pixels)  # leading batch dimensions pass through
    assert encoder(x).shape == (2, 3, 6)
    assert decoder(torch.randn(2, 3, 3)).shape == (2, 3, 5 * shape[1] * shape[2])
    # the decoder starts from the encoder's last feature map: the same (c_L, h_L, w_L)
    assert decoder.top[1:] == _conv_output_size(shape[1:], encoder.trunk)


@pytest.mark.parametrize(
    ("channels_in", "channels_out", "height", "width"), [(3, 2, 4, 5), (16, 1, 7, 7), (1, 4, 1, 3)]
)
def test_an_upsampling_conv_is_nearest_upsampling_then_its_convolution_forward_and_backward(
    channels_in, channels_out, height, width
):
    """Held to torch's own nn.Upsample + conv2d in float64, values and the gradients of weights and input."""
    torch.manual_seed(0)
    layer = UpsamplingConv2d(channels_in, channels_out, (2 * height, 2 * width)).double()
    x = torch.randn(3, channels_in, height, width, dtype=torch.float64, requires_grad=True)
    ours = layer(x)
    reference = F.conv2d(nn.Upsample(size=layer.size, mode="nearest")(x), layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (x, layer.weight, layer.bias), cotangent)
    reference_grads = torch.autograd.grad(reference, (x, layer.weight, layer.bias), cotangent)
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="takes"):
        layer(torch.randn(1, channels_in, height + 1, width, dtype=torch.float64))


@pytest.mark.parametrize(
    ("shape", "doublings"), [((1, 28, 28), 2), ((2, 27, 13), 0), ((1, 26, 26), 1), ((3, 32, 32), 2)]
)
def test_a_decoder_computes_what_its_upsample_and_conv2d_form_computes(shape, doublings):
    """Doubling upsamplings run as UpsamplingConv2d; others (27 x 13 from 14 x 7, 13 from 7) keep nn.Upsample.
    Either way the decoder is the function of the plain form, nn.Upsample then nn.Conv2d."""
    torch.manual_seed(0)
    decoder = ConvDecoder(3, shape, channels=4, depth=1, out_channels=2, residual=True).double()

    fused = [m for m in decoder.modules() if isinstance(m, UpsamplingConv2d)]
    assert len(fused) == doublings
    h = torch.randn(5, 3, dtype=torch.float64)
    ours = decoder(h)
    torch.testing.assert_close(ours, unfused(decoder)(h), rtol=1e-12, atol=1e-12)


def test_a_28x28_decoder_keeps_the_parameter_names_of_the_upsample_and_conv2d_form():
    """Checkpoints written before UpsamplingConv2d (nn.Upsample at trunk.3, its Conv2d at trunk.4, the last
    Upsample at the trunk's end) load unchanged."""
    decoder = ConvDecoder(40, (1, 28, 28), channels=16, depth=1, out_channels=1, residual=True)
    layers = ["stem", "trunk.2.conv1", "trunk.2.conv2", "trunk.4", "trunk.6.conv1", "trunk.6.conv2", "head"]
    assert list(decoder.state_dict()) == [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]


def test_a_residual_cell_starts_as_the_identity_and_learns_a_residual():
    torch.manual_seed(0)
    cell = ResidualCell(3, "relu")
    h = torch.randn(2, 3, 5, 5)
    assert torch.equal(cell(h), h)
    cell(h).square().sum().backward()
    assert cell.conv2.weight.grad.abs().sum() > 0  # the zero-initialised branch gets a gradient at once


def test_a_decoder_entry_is_a_function_of_its_own_latent_only():
    """No batch coupling (no normalisation layers): one image's parameters do not depend on the others'."""
    torch.manual_seed(0)
    decoder = ConvDecoder(2, (1, 12, 12), channels=4, depth=2, out_channels=1, residual=True)
    h = torch.randn(5, 2)
    together = decoder(h)
    alone = torch.cat([decoder(h[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


NETWORK_SPECS = [
    dict(network=network, latent_dims=latents, prior=prior)
    for network in ("conv", "resnet")
    for latents in ((3,), (3, 2))
    for prior in ("normal", "vamp")
]


@pytest.mark.parametrize("options", NETWORK_SPECS, ids=lambda o: f"{o['network']}-{len(o['latent_dims'])}-{o['prior']}")
def test_every_network_serves_both_layer_counts_both_priors_and_every_objective(options):
    torch.manual_seed(0)
    spec = ModelSpec(image_shape=(3, 10, 12), channels=4, hidden=8, pseudo_inputs=3, **options)
    model = build_model(spec)
    x = torch.rand(4, spec.input_dim).bernoulli()
    eps = torch.randn(2, 4, spec.latent_dim)
    for objective in (elbo(model, x, eps[:1]), iwae(model, x, eps), dreg(model, x, eps)):
        assert objective.loss.shape == (4,) and torch.isfinite(objective.loss).all()
        model.zero_grad()
        objective.surrogate.backward()
        gradients = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert sample_means(model, 5).shape == (5, spec.input_dim)
    means = reconstruct_means(model, x)
    assert means.shape == (4, spec.input_dim) and ((means >= 0) & (means <= 1)).all()
    # the fast paths step aside for the convolutional networks, and say why
    runtime = Runtime(1, False, False, "fp32", "cpu")
    assert training_kernel(spec, elbo_spec(), runtime) is None
    assert evaluation_decoder(model) is None


def elbo_spec():
    from vaelab.config import ObjectiveSpec

    return ObjectiveSpec()


def test_a_conv_model_s_log_joint_matches_torch_distributions():
    """log p(x, z) of a conv Bernoulli model = Bernoulli(logits).log_prob(x) + N(0, I).log_prob(z), independently."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(network="resnet", image_shape=(3, 9, 11), channels=4, latent_dims=(3,))).double()
    x = torch.rand(2, model.spec.input_dim, dtype=torch.float64).bernoulli()
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    logits = model.logits(z)
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    reference = reference + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), reference)


def test_a_conv_network_needs_an_image_shape():
    with pytest.raises(VaelabError, match="needs an image shape"):
        ModelSpec(network="conv", input_dim=30)
    with pytest.raises(VaelabError, match="differs from image_shape"):
        ModelSpec(image_shape=(3, 4, 4), input_dim=30)
    assert ModelSpec(image_shape=(3, 4, 4)).input_dim == 48  # the default input_dim follows the image
    assert ModelSpec(network="conv").shape == (1, 28, 28)
