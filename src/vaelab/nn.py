"""Building blocks, configured rather than subclassed: MLP and convolutional trunks, and their heads.

An `MLP` is `depth` hidden layers of `width` units with one activation, then a linear head;
a `GaussianMLP` reads the head's 2·D outputs as (mu, log σ²). Layers are created in the order
they are applied, with PyTorch's default initialisation, so a model built from these blocks
draws its initial weights from the global generator exactly as the hand-written modules they
replace did (the PyTorch VAE example's `fc1`..`fc4`).

`ConvEncoder` and `ConvDecoder` are the convolutional networks next to the image: strided 3x3
convolutions halve the resolution (channels doubling) until the shorter side is at most 8, and the
decoder mirrors them with nearest-neighbour upsampling to the encoder's exact sizes, so any H x W
works. Where the upsampling exactly doubles the size, it and the 3x3 convolution after it run as one
`UpsamplingConv2d` at the lower resolution (the same function of the same weights, 2-4x faster on a
CPU). With `residual=True` every level also holds `depth` residual cells
h + conv(act(conv(act(h)))) (the ResNet blocks of Kingma et al. 2016's IAF VAE and NVAE, without
normalisation layers, whose batch statistics would tie an image's likelihood to its batch). Both
take and give flat vectors (..., P) in (C, H, W) order, so everything above them sees the MLP's
interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus, "gelu": nn.GELU}


class MLP(nn.Module):
    """x (..., in_dim) -> `depth` x [Linear(width), activation] -> Linear(out_dim): (..., out_dim).

    `trunk` holds the hidden layers (an nn.Sequential, empty when depth = 0) and `head` the
    final linear layer, so a fast path can reach the last hidden activation `trunk(x)`.
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(depth):
            layers += [nn.Linear(in_dim if index == 0 else width, width), ACTIVATIONS[activation]()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width if depth else in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class GaussianNet(nn.Module):
    """x (..., in_dim) -> mu, logvar (..., out_dim): the parameters of N(mu, diag exp(logvar)) from `net`.

    mu and logvar come from one head of 2·out_dim outputs (one matrix product instead of
    two; same fan-in, so the same initial distribution as two separate heads). Under autocast
    they come back in float32, the type the log-densities and the KL are computed in.
    """

    def __init__(self, net: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.net = net
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = full_precision(self.net(x)).chunk(2, dim=-1)
        return mu, logvar


class GaussianMLP(GaussianNet):
    """A GaussianNet whose net is an MLP in_dim -> width x depth -> 2·out_dim."""

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, activation: str = "relu") -> None:
        super().__init__(MLP(in_dim, width, depth, 2 * out_dim, activation), out_dim)


MAX_SIDE_AFTER_HALVING = 8  # halve the resolution while the shorter side is larger than this
MAX_HALVINGS = 4


def resolutions(height: int, width: int) -> list[tuple[int, int]]:
    """The (H, W) of each level, full resolution first: halved (rounding up) while min(H, W) > 8, at most 4 times."""
    sizes = [(height, width)]
    while min(sizes[-1]) > MAX_SIDE_AFTER_HALVING and len(sizes) <= MAX_HALVINGS:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ResidualCell(nn.Module):
    """h (B, c, H, W) -> h + conv3x3(act(conv3x3(act(h)))); the second convolution starts at zero, so each
    cell starts as the identity and a deep stack trains from the first step (as Fixup and NVAE initialise)."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.act1 = ACTIVATIONS[activation]()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act2 = ACTIVATIONS[activation]()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(self.act2(self.conv1(self.act1(h))))


# Nearest 2x upsampling u[p] = x[p // 2] followed by a 3x3 kernel w over offsets d in {-1, 0, 1} gives output
# row 2i + a the input rows i + e, e in {-1, 0, 1}, weighted by (PHASES[a] @ w)[e]: for a = 0 the rows i - 1, i, i
# (taps w[-1], w[0] + w[1], 0), for a = 1 the rows i, i, i + 1 (taps 0, w[-1] + w[0], w[1]). Zero padding agrees:
# u[-1] and u[2h] read x[-1] and x[h], both padding.
PHASES = torch.tensor(
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]
)


class UpsamplingConv2d(nn.Conv2d):
    """x (n, in, h, w) -> conv3x3(nearest 2x upsampling of x): (n, out, 2h, 2w), computed at h x w.

    The same parameters as the Conv2d(in, out, 3, padding=1) it stands for (a checkpoint of either form
    loads into the other), applied as four phase kernels (PHASES) in one convolution of 4·out channels at
    the input's resolution, interleaved by a pixel shuffle: no upsampled map is ever made, and the
    convolution has 4x the output channels at 1/4 of the positions, which a CPU computes far faster
    (the 16 -> 1 head of a 28x28 decoder: 4x). Equal to upsampling then convolving up to rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.size = tuple(size)  # the output's (H, W): twice the input's
        self.register_buffer("phases", PHASES.clone(), persistent=False)

    def phase_weight(self) -> torch.Tensor:
        """(4·out, in, 3, 3): output channel 4o + 2a + b is out channel o at row phase a, column phase b."""
        phases = self.phases.to(self.weight.dtype)
        weight = torch.einsum("aed,bfg,oidg->oabief", phases, phases, self.weight)
        return weight.reshape(4 * self.out_channels, self.in_channels, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size[0] // 2, self.size[1] // 2):
            raise ValueError(f"UpsamplingConv2d to {self.size} takes {self.size[0] // 2}x{self.size[1] // 2} inputs")
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        return F.pixel_shuffle(F.conv2d(x, self.phase_weight(), bias, padding=1), 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, upsampled to {self.size}"


def unfused(module: nn.Module) -> nn.Module:
    """`module` with every UpsamplingConv2d replaced, in place, by nn.Upsample then an nn.Conv2d of the same
    weights: the plain form it computes (the reference of tests/test_nn.py and bench/upsampling.py)."""
    if isinstance(module, UpsamplingConv2d):
        conv = nn.Conv2d(module.in_channels, module.out_channels, 3, padding=1).to(module.weight)
        conv.load_state_dict(module.state_dict())
        return nn.Sequential(nn.Upsample(size=module.size, mode="nearest"), conv)
    for name, child in module.named_children():
        setattr(module, name, unfused(child))
    return module


def _upsample_conv(
    in_channels: int, out_channels: int, source: tuple[int, int], size: tuple[int, int]
) -> list[nn.Module]:
    """Nearest upsampling from `source` to `size`, then a 3x3 convolution, as two modules: one UpsamplingConv2d
    where size doubles source (an nn.Identity keeps the upsampling's place, so the layer indices and the
    checkpoints of both forms are the same), else nn.Upsample and nn.Conv2d."""
    if tuple(size) == (2 * source[0], 2 * source[1]):
        return [nn.Identity(), UpsamplingConv2d(in_channels, out_channels, size)]
    return [nn.Upsample(size=size, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, padding=1)]


def _cells(channels: int, depth: int, activation: str, residual: bool) -> list[nn.Module]:
    """`depth` blocks at one resolution: residual cells, or plain [conv3x3, activation] layers."""
    if residual:
        return [ResidualCell(channels, activation) for _ in range(depth)]
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), ACTIVATIONS[activation]()]
    return layers


def level_channels(channels: int, levels: int) -> list[int]:
    """Channels at each level: doubled at every halving, at most 8x the first."""
    return [channels * min(2**level, 8) for level in range(levels)]


class ConvEncoder(nn.Module):
    """x (..., C·H·W) -> per halving: [strided conv3x3, activation, blocks] -> flatten -> Linear -> (..., out_dim).

    Nothing runs at full resolution but the first convolution: on a CPU the full-resolution layers
    would cost more than all the others together.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        channels: int,
        depth: int,
        out_dim: int,
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        sizes = resolutions(shape[1], shape[2])
        halvings = len(sizes) - 1
        widths = level_channels(channels, max(halvings, 1))
        layers: list[nn.Module] = []
        previous = shape[0]
        for level, width in enumerate(widths):
            stride = 2 if level < halvings else 1  # an image already small is not halved at all
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1), ACTIVATIONS[activation]()]
            layers += _cells(width, depth, activation, residual)
            previous = width
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(widths[-1] * sizes[-1][0] * sizes[-1][1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        images = x.reshape(-1, *self.shape)  # (n, C, H, W)
        return self.head(self.trunk(images)).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """h (..., in_dim) -> Linear -> (c_L, h_L, w_L) -> per level up: [blocks, upsample, conv3x3, activation]
    -> upsample to H x W -> conv3x3 head -> (..., M·H·W). An upsampling that doubles the size and the
    convolution after it are one UpsamplingConv2d (the head too, then).

    M = `out_channels` parameters per position (Bernoulli logits: C; discretized logistic: 2C; ...),
    returned flat in (M, H, W) order. The layers mirror ConvEncoder's, sizes included.
    """

    def __init__(
        self,
        in_dim: int,
        shape: tuple[int, int, int],
        channels: int,
        depth: int,
        out_channels: int,
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        sizes = resolutions(shape[1], shape[2])
        halvings = len(sizes) - 1
        widths = level_channels(channels, max(halvings, 1))
        self.top = (widths[-1], *sizes[-1])
        self.stem = nn.Linear(in_dim, widths[-1] * sizes[-1][0] * sizes[-1][1])
        layers: list[nn.Module] = [ACTIVATIONS[activation](), nn.Unflatten(1, self.top)]
        for level in range(len(widths) - 1, 0, -1):
            layers += _cells(widths[level], depth, activation, residual)
            layers += _upsample_conv(widths[level], widths[level - 1], sizes[level + 1], sizes[level])
            layers.append(ACTIVATIONS[activation]())
        layers += _cells(widths[0], depth, activation, residual)
        if halvings:  # the last upsampling: the trunk's last layer, or inside the head
            upsampling, head = _upsample_conv(widths[0], out_channels, sizes[1], sizes[0])
            layers += [] if isinstance(upsampling, nn.Identity) else [upsampling]
        else:
            head = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        self.trunk = nn.Sequential(*layers)
        self.head = head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch = h.shape[:-1]
        features = self.trunk(self.stem(h.reshape(-1, h.shape[-1])))  # (n, c_1, H, W), or H/2 x W/2 ahead of
        # an UpsamplingConv2d head
        return self.head(features).reshape(*batch, -1)


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """A bfloat16/float16 result of autocast back in float32; float32 and float64 pass unchanged."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


@contextlib.contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[bool]:
    """Within the block, CPU arithmetic flushes subnormal floats (|x| < 1.2e-38 in float32) to zero.

    Trained VAEs drift into subnormal values (tiny gradients, Adam moments, saturated units), and
    x86 CPUs handle those in microcode: a trained VampPrior DReG forward and backward measured 86 ms
    with them and 28 ms without, on a loaded machine (bench/denormals.py, bench/README.md).
    Flushing changes results only below float32's normal range. The setting is process-wide and
    torch cannot read it back, so the block switches it off again on exit if it switched it on.
    Yields whether flushing is in effect (False where the CPU cannot flush).
    """
    active = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield active
    finally:
        if active:
            torch.set_flush_denormal(False)
