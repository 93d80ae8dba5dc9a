"""Specification of the networks: every registered Wide ResNet and the generator against SPEC.md §1 and §2.

`AuthorsWideResNet` below is an independent re-statement of the authors' network (their module names, their
flat 4-tuple return and 8x8 pooling), written from SPEC.md §1; test_checkpoints.py uses it to write files
"as the authors' code would".
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zskt.errors import ZsktError
from zskt.models import MODELS, Generator, WideResNet, build_model, count_parameters, parse_wrn_name
from zskt.models.generator import upsample_conv_weight

WRNS = [name for name, entry in MODELS.items() if entry.family == "wrn"]

# SPEC.md §1 table: published parameter counts and state_dict entry counts.
PARAMS = {"wrn-16-1": 175_066, "wrn-16-2": 691_674, "wrn-40-1": 563_930, "wrn-40-2": 2_243_546}
ENTRIES = {"wrn-16-1": 82, "wrn-16-2": 83, "wrn-40-1": 226, "wrn-40-2": 227}


# ------------------------------------------------------------------------------ the authors' network,
# restated


class BasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (
            None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        )

    def forward(self, x):
        if self.equalInOut:  # identity skip carries the raw input
            h = self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x)))))
            return x + self.conv2(h)
        x = self.relu1(self.bn1(x))  # both branches read the pre-activated input
        h = self.relu2(self.bn2(self.conv1(x)))
        return self.convShortcut(x) + self.conv2(h)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride)]
        blocks += [BasicBlock(out_planes, out_planes, 1) for _ in range(nb_layers - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class AuthorsWideResNet(nn.Module):
    """The authors' constructor order: (depth, num_classes, widen_factor)."""

    def __init__(self, depth, num_classes, widen_factor=1):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        a1 = self.block1(self.conv1(x))
        a2 = self.block2(a1)
        a3 = self.block3(a2)
        out = F.avg_pool2d(self.relu(self.bn1(a3)), 8)
        return self.fc(out.view(-1, self.nChannels)), a1, a2, a3


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics and affine values, so comparisons exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


# ------------------------------------------------------------------------------ expected keys, from SPEC.md
# §1


def bn(prefix: str, c: int) -> list[tuple[str, tuple]]:
    """SPEC's "BN(C)": four (C,) entries and a scalar num_batches_tracked."""
    return [(f"{prefix}.{name}", (c,)) for name in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def block(prefix: str, c_in: int, c_out: int, shortcut: bool) -> list[tuple[str, tuple]]:
    keys = bn(f"{prefix}.bn1", c_in) + [(f"{prefix}.conv1.weight", (c_out, c_in, 3, 3))]
    keys += bn(f"{prefix}.bn2", c_out) + [(f"{prefix}.conv2.weight", (c_out, c_out, 3, 3))]
    return keys + ([(f"{prefix}.convShortcut.weight", (c_out, c_in, 1, 1))] if shortcut else [])


# WRN-16-1 and WRN-16-2 as SPEC.md §1 lists them, block by block.
WRN_16_1 = (
    [("conv1.weight", (16, 3, 3, 3))]
    + block("block1.layer.0", 16, 16, False)
    + block("block1.layer.1", 16, 16, False)
    + block("block2.layer.0", 16, 32, True)
    + block("block2.layer.1", 32, 32, False)
    + block("block3.layer.0", 32, 64, True)
    + block("block3.layer.1", 64, 64, False)
    + bn("bn1", 64)
    + [("fc.weight", (10, 64)), ("fc.bias", (10,))]
)
WRN_16_2 = (
    [("conv1.weight", (16, 3, 3, 3))]
    + block("block1.layer.0", 16, 32, True)
    + block("block1.layer.1", 32, 32, False)
    + block("block2.layer.0", 32, 64, True)
    + block("block2.layer.1", 64, 64, False)
    + block("block3.layer.0", 64, 128, True)
    + block("block3.layer.1", 128, 128, False)
    + bn("bn1", 128)
    + [("fc.weight", (10, 128)), ("fc.bias", (10,))]
)


def key_shapes(model: nn.Module) -> list[tuple[str, tuple]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


# ------------------------------------------------------------------------------ Wide ResNets


@pytest.mark.parametrize("name", WRNS)
def test_output_and_activation_shapes(name):
    _, k = parse_wrn_name(name)
    for in_channels, size in ((3, 32), (1, 16)):
        model = build_model(name, num_classes=7, in_channels=in_channels)
        logits, acts = model(torch.randn(2, in_channels, size, size))
        assert logits.shape == (2, 7)
        assert [tuple(a.shape) for a in acts] == [
            (2, 16 * k, size, size),
            (2, 32 * k, size // 2, size // 2),
            (2, 64 * k, size // 4, size // 4),
        ]


@pytest.mark.parametrize("name", WRNS)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name)
    logits, acts = model(torch.randn(4, 3, 32, 32))
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + sum(a.pow(2).mean() for a in acts)
    loss.backward()
    for key, p in model.named_parameters():
        assert p.grad is not None, key
        assert p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", WRNS)
def test_parameter_and_entry_counts(name):
    model = build_model(name)
    assert count_parameters(model) == PARAMS[name]
    assert len(model.state_dict()) == ENTRIES[name]


def test_wrn_16_keys_order_and_shapes_match_spec():
    assert key_shapes(build_model("wrn-16-1")) == WRN_16_1
    assert key_shapes(build_model("wrn-16-2")) == WRN_16_2


@pytest.mark.parametrize("name", ["wrn-40-1", "wrn-40-2"])
def test_wrn_40_keys_by_construction(name):
    # Six blocks per group; only each group's first block changes width (and stride), and it alone has a
    # shortcut where the width changes: for k=1 block1.layer.0 keeps 16 channels and has none.
    _, k = parse_wrn_name(name)
    widths = [16, 16 * k, 32 * k, 64 * k]
    expected = [("conv1.weight", (16, 3, 3, 3))]
    for g in (1, 2, 3):
        for i in range(6):
            c_in = widths[g - 1] if i == 0 else widths[g]
            expected += block(f"block{g}.layer.{i}", c_in, widths[g], c_in != widths[g])
    expected += bn("bn1", 64 * k) + [("fc.weight", (10, 64 * k)), ("fc.bias", (10,))]
    model = build_model(name)
    assert key_shapes(model) == expected
    shortcuts = [key for key, _ in expected if "convShortcut" in key]
    assert len(shortcuts) == (2 if k == 1 else 3)


def test_in_channels_changes_only_conv1():
    grey, colour = build_model("wrn-16-1", in_channels=1), build_model("wrn-16-1")
    assert grey.conv1.weight.shape == (16, 1, 3, 3)
    assert [k for k, _ in key_shapes(grey)] == [k for k, _ in key_shapes(colour)]
    assert [s for k, s in key_shapes(grey) if k != "conv1.weight"] == [
        s for k, s in key_shapes(colour) if k != "conv1.weight"
    ]


@pytest.mark.parametrize("name", WRNS)
def test_authors_init(name):
    torch.manual_seed(0)
    model = build_model(name)
    for key, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()
            target = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
            # >= 432 samples per conv: the sample std is within a few percent of the target.
            assert w.std().item() == pytest.approx(target, rel=0.15), key
            assert abs(w.mean().item()) < 0.15 * target, key
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), key
    assert torch.all(model.fc.bias == 0)
    # The Linear weight keeps PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1 / math.sqrt(model.fc.in_features)
    assert model.fc.weight.abs().max() <= bound
    assert model.fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)


@pytest.mark.parametrize("name", WRNS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_forward_equals_authors_forward(name, train):
    depth, k = parse_wrn_name(name)
    torch.manual_seed(1)
    ours = build_model(name)
    randomise_bn(ours)
    reference = AuthorsWideResNet(depth, 10, k)
    reference.load_state_dict(ours.state_dict(), strict=True)
    ours.train(train)
    reference.train(train)
    x = torch.randn(3, 3, 32, 32)
    logits, acts = ours(x)
    ref_logits, *ref_acts = reference(x)
    # Same operations up to the pooling: a global mean and an 8x8 average pool sum in different orders.
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(acts, ref_acts, strict=True):
        torch.testing.assert_close(a, b)
    # In train mode both updated their running statistics identically.
    for (key, a), b in zip(ours.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)


@pytest.mark.parametrize("name", WRNS)
def test_channels_last_gives_same_output(name):
    torch.manual_seed(2)
    model = build_model(name).eval()
    randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    logits, acts = model(x)
    model = model.to(memory_format=torch.channels_last)
    logits_cl, acts_cl = model(x.to(memory_format=torch.channels_last))
    # Convolution kernels for the two layouts sum in different orders: equal up to float32 rounding, which is
    # measured against each tensor's scale (act3 of a WRN-40 with these BN statistics reaches ~1e3).
    for a, b in zip((logits_cl, *acts_cl), (logits, *acts), strict=True):
        assert a.is_contiguous(memory_format=torch.channels_last) or a.dim() == 2
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_autocast_forward_runs():
    model = build_model("wrn-16-1").to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, acts = model(torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last))
    assert logits.shape == (2, 10) and torch.isfinite(logits.float()).all()
    assert [a.shape[1] for a in acts] == [16, 32, 64]


def test_dropout_only_in_training():
    torch.manual_seed(3)
    model = WideResNet(16, 1, drop_rate=0.5)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])


def test_build_model_names_and_arch():
    model = build_model("WRN-40-2", num_classes=5, in_channels=1)  # the authors' spelling
    assert (model.depth, model.widen_factor, model.num_classes, model.in_channels) == (40, 2, 5, 1)
    assert model.arch() == {
        "family": "wrn",
        "name": "wrn-40-2",
        "depth": 40,
        "widen_factor": 2,
        "num_classes": 5,
        "in_channels": 1,
        "drop_rate": 0.0,
    }
    assert WideResNet(22, 4).arch()["name"] == "wrn-22-4"  # not registered, but any wrn-D-W builds by name
    model = build_model("wrn-28-2", num_classes=3)
    assert (model.depth, model.widen_factor, model.num_classes) == (28, 2, 3)


def test_unknown_model_name_lists_registered_names():
    with pytest.raises(
        ZsktError,
        match="unknown model 'resnet-50'.*wrn-16-1, wrn-16-2, wrn-40-1, wrn-40-2, "
        "resnet-18, resnet-34, vgg-11, or any wrn-DEPTH-WIDTH",
    ):
        build_model("resnet-50")
    with pytest.raises(ZsktError, match="depth 30 is invalid"):
        build_model("wrn-30-1")


@pytest.mark.parametrize("depth", [4, 15, 17, 41])
def test_bad_depth_is_an_error(depth):
    with pytest.raises(ZsktError, match=f"depth {depth} is invalid.*6n\\+4"):
        WideResNet(depth, 1)


# ------------------------------------------------------------------------------ generator


def test_generator_output_shapes():
    assert Generator()(torch.randn(4, 100)).shape == (4, 3, 32, 32)
    assert Generator(z_dim=20, image_size=16, out_channels=1)(torch.randn(5, 20)).shape == (5, 1, 16, 16)


def test_generator_parameters_and_keys():
    generator = Generator()
    assert count_parameters(generator) == 1_051_145
    shapes = {key: tuple(value.shape) for key, value in generator.state_dict().items()}
    expected = {"layers.0.weight": (8192, 100), "layers.0.bias": (8192,)}
    expected.update(bn("layers.2", 128) + bn("layers.5", 128) + bn("layers.9", 64) + bn("layers.12", 3))
    expected.update({"layers.4.weight": (128, 128, 3, 3), "layers.4.bias": (128,)})
    expected.update({"layers.8.weight": (64, 128, 3, 3), "layers.8.bias": (64,)})
    expected.update({"layers.11.weight": (3, 64, 3, 3), "layers.11.bias": (3,)})
    assert shapes == expected
    layer_types = [type(m) for m in generator.layers]
    assert layer_types[3] is nn.Upsample and layer_types[7] is nn.Upsample
    assert layer_types[6] is nn.LeakyReLU and generator.layers[6].negative_slope == 0.2
    assert not list(generator.layers[1].parameters())
    assert generator.arch() == {
        "family": "generator",
        "z_dim": 100,
        "image_size": 32,
        "out_channels": 3,
        "final_bn_affine": True,
    }


@pytest.mark.parametrize("affine", [True, False], ids=["current", "initial-commit"])
def test_generator_output_is_standardised_per_channel(affine):
    # The final BN (affine weight 1 / bias 0 at init, or no affine at all as in commit f9060a1) standardises
    # each channel over batch and space in train mode: mean 0, (biased) std 1 up to BN's eps.
    torch.manual_seed(4)
    generator = Generator(final_bn_affine=affine).train()
    images = generator(generator.sample_z(16))
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    torch.testing.assert_close(images.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), rtol=1e-3, atol=1e-3)
    keys = generator.state_dict()
    assert ("layers.12.weight" in keys) is affine and ("layers.12.bias" in keys) is affine
    assert "layers.12.running_mean" in keys
    assert count_parameters(generator) == 1_051_145 - (0 if affine else 6)


@pytest.mark.parametrize("size,channels", [(32, 3), (16, 1)])
def test_generator_fused_upsample_is_the_literal_layers(size, channels):
    # forward runs "upsample x2, conv 3x3" as one stride-2 transposed convolution; the literal layers (the
    # authors' order) must give the same images and the same gradients for every parameter, in float64 to
    # 1e-10 and in float32 channels_last (the training layout) to float rounding.
    torch.manual_seed(7)
    fused = Generator(z_dim=12, image_size=size, out_channels=channels).train()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # BN scales / biases away from 1 / 0
    literal = copy.deepcopy(fused)
    literal.fuse_upsample = False
    cases = ((torch.float64, 1e-10, torch.contiguous_format), (torch.float32, 2e-5, torch.channels_last))
    for dtype, tol, layout in cases:
        a = copy.deepcopy(fused).to(dtype=dtype, memory_format=layout)
        b = copy.deepcopy(literal).to(dtype=dtype, memory_format=layout)
        z = torch.randn(6, 12, dtype=dtype)
        seen = []  # a channels_last module keeps its upsample-conv outputs channels_last (no layout copies)
        a.layers[5].register_forward_pre_hook(
            lambda m, args, seen=seen, layout=layout: seen.append(args[0].is_contiguous(memory_format=layout))
        )
        out_a, out_b = a(z), b(z)
        assert seen == [True]
        assert out_a.shape == (6, channels, size, size)
        torch.testing.assert_close(out_a, out_b, rtol=tol, atol=tol)
        weights = torch.randn_like(out_a)
        (out_a * weights).sum().backward()
        (out_b * weights).sum().backward()
        # (a conv bias before a train-mode BN gets a gradient that is zero up to rounding: absolute tolerance
        # on the scale of all gradients)
        scale = max(p.grad.abs().max().item() for p in b.parameters())
        for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=False):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=tol, atol=tol * scale, msg=name)
        for key, value in b.state_dict().items():  # the BN running statistics move the same way
            torch.testing.assert_close(a.state_dict()[key], value, rtol=tol, atol=tol, msg=key)


def test_upsample_conv_weight_sums_the_taps_that_read_one_pixel():
    # 1-D picture: taps w0 w1 w2 become [w2, w1+w2, w0+w1, w0]; a one-hot kernel shows the map exactly.
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 0, 2] = 1.0  # row tap 0 (offset -1), column tap 2 (offset +1)
    expanded = upsample_conv_weight(weight)[0, 0]
    expected = torch.zeros(4, 4)
    expected[2:, :2] = 1.0  # rows: w0 feeds kernel rows 2 and 3; columns: w2 feeds kernel columns 0 and 1
    assert torch.equal(expanded, expected)


def test_generator_sample_z_is_seeded():
    generator = Generator(z_dim=8, image_size=16)
    a = generator.sample_z(3, generator=torch.Generator().manual_seed(0))
    b = generator.sample_z(3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 8) and torch.equal(a, b)


@pytest.mark.parametrize("size", [30, 2, 0])
def test_generator_bad_image_size_is_an_error(size):
    with pytest.raises(ZsktError, match=f"image_size {size} is invalid; expected a multiple of 4"):
        Generator(image_size=size)


def _random_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.3, 3)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_copy_computes_the_same_function_and_input_gradient(channels_last):
    from zskt.models.frozen import FrozenAffine, frozen_copy

    torch.manual_seed(0)
    model = _random_bn_statistics(build_model("wrn-16-2", 10, 3))
    x = torch.randn(6, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = frozen_copy(model)
    # Folded into conv1 where bn2 follows it, the other batch norms as affine maps; the original untouched.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenAffine) for m in frozen.modules()) == 7  # 6 blocks' bn1 + the final bn1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in frozen.parameters())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    logits_a, acts_a = model(xa)
    logits_b, acts_b = frozen(xb)
    for a, b in [(logits_a, logits_b), *zip(acts_a, acts_b, strict=False)]:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    (logits_a.square().sum() + sum(a.mean() for a in acts_a)).backward()
    (logits_b.square().sum() + sum(b.mean() for b in acts_b)).backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5 * xa.grad.abs().max().item())


def test_frozen_copy_keeps_bf16_activations_and_handles_any_network():
    from zskt.models.frozen import frozen_copy

    torch.manual_seed(0)
    model = _random_bn_statistics(build_model("wrn-16-1", 10, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, acts = model(torch.randn(2, 1, 16, 16))
        _, frozen_acts = frozen_copy(model)(torch.randn(2, 1, 16, 16))
    assert [a.dtype for a in frozen_acts] == [a.dtype for a in acts]
    plain = _random_bn_statistics(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(frozen_copy(plain)(x), plain(x))
