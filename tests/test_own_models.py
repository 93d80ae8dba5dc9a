"""Specification of the networks beyond the paper's: the registry, the zju-vipa ResNets and VGG-11 (against
their layout restated here), feature maps through hooks, any network through `resolve_network`, timm.

`ZjuBlock`/`ZjuResNet` and `zju_vgg11_bn` below restate the zju-vipa DataFree code's CIFAR ResNet and
VGG-11-bn from their published layout (module names, order, forward); the tests load their state_dicts
into ours.
"""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zskt.errors import ZsktError
from zskt.losses import attention_map
from zskt.models import (
    MODELS,
    FeatureModel,
    WideResNet,
    batchnorm_layers,
    build_model,
    check_feature_pairs,
    count_parameters,
    feature_shapes,
    frozen_copy,
    load_model,
    resolve_network,
    save_model,
    with_features,
)
from zskt.models.frozen import FrozenBatchNorm2d

# Parameters at 10 classes, 3 channels: the paper's (SPEC.md §1) and the data-free benchmark's networks.
PARAMS = {
    "wrn-16-1": 175_066,
    "wrn-16-2": 691_674,
    "wrn-40-1": 563_930,
    "wrn-40-2": 2_243_546,
    "resnet-18": 11_173_962,
    "resnet-34": 21_282_122,
    "vgg-11": 9_231_114,
}


@contextlib.contextmanager
def one_line(*words: str):
    """pytest.raises(ZsktError) whose message is one line containing every word."""
    with pytest.raises(ZsktError) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def scramble_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that equal outputs mean equal BN handling."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------- the zju-vipa layouts, restated


class ZjuBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return F.relu(out)


class ZjuResNet(nn.Module):
    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._stage(64, num_blocks[0], 1)
        self.layer2 = self._stage(128, num_blocks[1], 2)
        self.layer3 = self._stage(256, num_blocks[2], 2)
        self.layer4 = self._stage(512, num_blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _stage(self, planes, n, stride):
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(ZjuBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, (1, 1)).view(out.size(0), -1))


class ZjuVGG(nn.Module):
    def __init__(self, cfg, num_classes=10):
        super().__init__()
        previous = 3
        for i, widths in enumerate(cfg):
            layers = []
            for w in widths:
                layers += [nn.Conv2d(previous, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(True)]
                previous = w
            setattr(self, f"block{i}", nn.Sequential(*layers[:-1]))
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        return self.classifier(self.pool4(x).view(x.size(0), -1))


def zju_vgg11_bn(num_classes=10):
    return ZjuVGG([[64], [128], [256, 256], [512, 512], [512, 512]], num_classes)


# ------------------------------------------------------------------------------ the registry


@pytest.mark.parametrize("name", MODELS)
def test_registered_models_parameter_counts_and_any_size(name):
    model = build_model(name)
    assert count_parameters(model) == PARAMS[name]
    grey = build_model(name, num_classes=7, in_channels=1)
    out = grey(torch.randn(2, 1, 16, 16))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 7)
    entry = MODELS[name]
    # The default feature layers exist and give three maps through the wrapper.
    _, maps = with_features(grey)(torch.randn(2, 1, 16, 16))
    assert len(maps) == len(entry.feature_layers) == 3


@pytest.mark.parametrize(
    "name,reference",
    [
        ("resnet-18", lambda: ZjuResNet([2, 2, 2, 2])),
        ("resnet-34", lambda: ZjuResNet([3, 4, 6, 3])),
        ("vgg-11", zju_vgg11_bn),
    ],
)
def test_state_dict_keys_and_shapes_equal_the_zju_vipa_layout(name, reference):
    ours, theirs = build_model(name).state_dict(), reference().state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]


def test_resnet_keys_name_the_shortcuts_only_where_the_shape_changes():
    keys = set(build_model("resnet-34").state_dict())
    assert "layer1.0.shortcut.0.weight" not in keys and "layer2.0.shortcut.1.running_var" in keys
    assert "layer2.1.shortcut.0.weight" not in keys and {"conv1.weight", "bn1.weight", "linear.bias"} <= keys
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("layer3.")) == 5  # 6 blocks in stage 3


@pytest.mark.parametrize(
    "name,reference", [("resnet-34", lambda: ZjuResNet([3, 4, 6, 3])), ("vgg-11", zju_vgg11_bn)]
)
def test_zju_vipa_teacher_file_loads_strictly_with_equal_logits(tmp_path, name, reference):
    torch.manual_seed(0)
    theirs = scramble_bn(reference()).eval()
    # Their training script's checkpoint: a dict with the state_dict beside the arch name and the accuracy.
    torch.save(
        {"arch": name.replace("-", ""), "state_dict": theirs.state_dict(), "best_acc1": 95.7},
        tmp_path / "teacher.pth",
    )
    theirs.double()
    ours = load_model(tmp_path / "teacher.pth", arch=name, num_classes=10, in_channels=3).double()
    assert ours.arch()["name"] == name and not ours.training
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)  # 16x16: the same layers at a quarter of the cost
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    # Also saved from a DataParallel wrapper ("module." prefix) and as a bare state_dict.
    torch.save({f"module.{k}": v.float() for k, v in theirs.state_dict().items()}, tmp_path / "bare.pt")
    torch.testing.assert_close(
        load_model(tmp_path / "bare.pt").double()(x), theirs(x), rtol=1e-12, atol=1e-12
    )
    with one_line("holds", "expected resnet-18"):
        load_model(tmp_path / "teacher.pth", arch="resnet-18")
    with one_line("holds a 10-class", "expected 100 classes"):
        load_model(tmp_path / "teacher.pth", num_classes=100)


@pytest.mark.parametrize("name", ["resnet-18", "vgg-11"])
def test_project_files_of_the_new_families_round_trip(tmp_path, name):
    model = scramble_bn(build_model(name, num_classes=7, in_channels=1)).eval()
    save_model(
        with_features(model), tmp_path / "model.pt", dataset="digits", image_size=16
    )  # wrapper unwrapped
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.arch() == model.arch() and loaded.arch()["in_channels"] == 1
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))


def test_bottleneck_resnet_is_refused_in_one_line(tmp_path):
    state = build_model("resnet-18").state_dict()
    state["layer1.0.conv3.weight"] = torch.zeros(256, 64, 1, 1)
    torch.save(state, tmp_path / "r50.pt")
    with one_line("Bottleneck ResNet", "resnet-18, resnet-34"):
        load_model(tmp_path / "r50.pt")


# ------------------------------------------------------------------------------ feature maps


@pytest.mark.parametrize("name", ["wrn-16-2", "wrn-40-1"])
def test_hooks_give_exactly_the_wide_resnet_forwards_attention_maps(name):
    torch.manual_seed(0)
    model = scramble_bn(build_model(name)).eval()
    x = torch.randn(4, 3, 32, 32)
    logits, acts = model(x)
    assert with_features(model) is model  # the WRN's own forward already gives its three groups
    hooked = FeatureModel(model, MODELS[name].feature_layers)
    h_logits, h_acts = hooked(x)
    assert torch.equal(h_logits, logits)
    for a, b in zip(acts, h_acts, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(attention_map(a), attention_map(b))
    # Through the frozen (BN-folded) copy too, and in train mode (batch statistics).
    frozen = frozen_copy(hooked)
    for a, b in zip(frozen.module(x)[1], frozen(x)[1], strict=True):
        assert torch.equal(a, b)
    model.train()
    for a, b in zip(model(x)[1], hooked(x)[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_default_feature_maps_of_resnet_and_vgg_pair_up():
    resnet, vgg = with_features(build_model("resnet-18")), with_features(build_model("vgg-11"))
    assert feature_shapes(resnet, 3, 32) == [(128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert feature_shapes(vgg, 3, 32) == [(128, 16, 16), (256, 8, 8), (512, 4, 4)]
    check_feature_pairs(vgg, resnet, in_channels=3, image_size=32)
    # The hooked maps are the stages' outputs.
    x = torch.randn(2, 3, 32, 32)
    inner = resnet.module.eval()
    out = F.relu(inner.bn1(inner.conv1(x)))
    stage2 = inner.layer2(inner.layer1(out))
    torch.testing.assert_close(resnet.eval()(x)[1][0], stage2)
    with one_line("do not pair up", "32x32, 16x16, 8x8", "16x16, 8x8, 4x4", "--beta 0"):
        check_feature_pairs(with_features(build_model("wrn-16-1")), resnet, in_channels=3, image_size=32)


def test_explicit_layers_a_tuple_forward_and_none():
    model = build_model("resnet-18")
    _, maps = with_features(model, "layer4.1.bn2, linear")(torch.randn(2, 3, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 512, 2, 2), (2, 10)]

    class Tupled(nn.Module):  # a network whose forward already returns (logits, maps)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            a = self.conv(x)
            return self.fc(a.mean((2, 3))), (a,)

    net = Tupled()
    logits, maps = with_features(net)(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3) and len(maps) == 1 and maps[0].shape == (2, 4, 8, 8)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    logits, maps = with_features(plain)(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3) and maps == ()  # enough for --beta 0


def test_unknown_feature_layer_is_one_line_listing_the_layers():
    with one_line("--student-layers", "no layer 'layer5'", "conv1, bn1, layer1, layer2", "dotted names"):
        with_features(build_model("resnet-18"), "layer2,layer5", role="--student-layers")
    vgg = with_features(build_model("vgg-11"), "pool3")  # exists, but does not run at 32x32
    with one_line("'pool3' did not run"):
        vgg(torch.randn(2, 3, 32, 32))


def test_frozen_copy_folds_or_keeps_batch_norms():
    torch.manual_seed(0)
    for name in ("resnet-18", "vgg-11"):
        model = scramble_bn(build_model(name)).double().eval()
        names = [n for n, _ in batchnorm_layers(model)]
        assert names[:3] == (
            ["bn1", "layer1.0.bn1", "layer1.0.bn2"]
            if name == "resnet-18"
            else ["block0.1", "block1.1", "block2.1"]
        )
        assert len(names) == (20 if name == "resnet-18" else 8)
        kept = frozen_copy(model, fold_bn=False)
        assert [n for n, _ in batchnorm_layers(kept)] == names and not kept.training
        assert not any(p.requires_grad for p in kept.parameters()) and all(
            p.requires_grad for p in model.parameters()
        )
        folded = frozen_copy(model)
        assert batchnorm_layers(folded) == []
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
        # The kept batch norms are FrozenBatchNorm2d: still BatchNorm2d with the statistics, one multiply-add.
        assert all(type(m) is FrozenBatchNorm2d for _, m in batchnorm_layers(kept))
        for (_, a), (_, b) in zip(batchnorm_layers(kept), batchnorm_layers(model), strict=True):
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
        torch.testing.assert_close(kept(x), model(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ resolve_network

FACTORY = """
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make(num_classes):
    return SmallCNN(num_classes)


def make_any(**kwargs):
    return SmallCNN(**kwargs)


def five():
    return SmallCNN(5)


def not_a_network(num_classes):
    return "a string"


def broken(num_classes):
    raise ValueError("bad width")
"""


@pytest.fixture()
def factory_file(tmp_path):
    path = tmp_path / "outside" / "nets.py"
    path.parent.mkdir()
    path.write_text(FACTORY)
    return path


def test_module_callable_from_a_file_and_a_module(factory_file, monkeypatch):
    model = resolve_network(
        f"{factory_file}:make", role="--student", num_classes=10, in_channels=1, image_size=16
    )
    assert type(model).__name__ == "SmallCNN" and model.head.out_features == 10 and model.meta == {}
    grey = resolve_network(
        f"{factory_file}:make_any", role="--student", num_classes=4, in_channels=3, image_size=8
    )
    assert grey.features[0].in_channels == 3 and grey.head.out_features == 4  # **kwargs get in_channels too
    monkeypatch.chdir(factory_file.parent)  # importable as a module from the current folder
    monkeypatch.delitem(sys.modules, "nets", raising=False)
    model = resolve_network("nets:SmallCNN", role="--student", num_classes=3, in_channels=1, image_size=8)
    assert model.head.out_features == 3
    logits, maps = with_features(model)(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3) and maps == ()


def test_bad_specs_are_one_line_errors(factory_file, tmp_path):
    def resolve(spec, **kw):
        args = {"role": "--student", "num_classes": 10, "in_channels": 1, "image_size": 16, **kw}
        return resolve_network(spec, **args)

    with one_line("--student no_such_module_xyz:make", "cannot import no_such_module_xyz", "PYTHONPATH"):
        resolve("no_such_module_xyz:make")
    with one_line("has no attribute 'nope'", "make", "SmallCNN"):
        resolve(f"{factory_file}:nope")
    with one_line("returned a str, expected a torch.nn.Module"):
        resolve(f"{factory_file}:not_a_network")
    with one_line("calling broken(num_classes=10) failed", "ValueError: bad width"):
        resolve(f"{factory_file}:broken")
    with one_line("no file", "missing.py"):
        resolve(f"{tmp_path}/missing.py:make")
    with one_line("gives 5 outputs per image, the data has 10 classes"):
        resolve(f"{factory_file}:five")
    with one_line("--teacher", "vgg-11 cannot take 1x4x4 images"):
        resolve("vgg-11", role="--teacher", image_size=4, trained=False)
    with one_line("--teacher WRN-40-2 names an untrained network", "zskt train --model wrn-40-2"):
        resolve("WRN-40-2", role="--teacher", trained=True)
    with one_line("unknown network 'resnet-50'", "resnet-18", "module:callable", "timm:NAME"):
        resolve("resnet-50")
    with one_line("runs/teacher.pt not found"):
        resolve("runs/teacher.pt")
    bad = tmp_path / "syntax.py"
    bad.write_text("def make(:\n")
    with one_line("importing", "failed", "SyntaxError"):
        resolve(f"{bad}:make")


def test_network_files_through_resolve_network(tmp_path, factory_file):
    teacher = build_model("resnet-18", num_classes=10, in_channels=1)
    save_model(teacher, tmp_path / "teacher.pt", dataset="digits", image_size=16)
    loaded = resolve_network(
        str(tmp_path / "teacher.pt"),
        role="--teacher",
        num_classes=10,
        in_channels=1,
        image_size=16,
        trained=True,
        dataset="digits",
    )
    assert loaded.arch()["name"] == "resnet-18" and loaded.meta["image_size"] == 16
    with one_line("--teacher", "trained on 16x16 images, these are 32x32", "--image-size 16"):
        resolve_network(
            str(tmp_path / "teacher.pt"), role="--teacher", num_classes=10, in_channels=1, image_size=32
        )
    with one_line("--teacher", "holds a 10-class resnet-18", "expected 100 classes"):
        resolve_network(str(tmp_path / "teacher.pt"), role="--teacher", num_classes=100, in_channels=1)
    # A student from a module:callable, saved by a run: its weights reload only through its code, with trust.
    student = resolve_network(f"{factory_file}:make", role="--student", num_classes=10, in_channels=1)
    scramble_bn(student)
    save_model(with_features(student), tmp_path / "student.pt", spec=f"{factory_file}:make")
    with one_line("built by", "make", "--trust-checkpoint"):
        load_model(tmp_path / "student.pt")
    with one_line("--trust-checkpoint"):
        resolve_network(str(tmp_path / "student.pt"), role="--teacher", num_classes=10, in_channels=1)
    again = resolve_network(
        str(tmp_path / "student.pt"),
        role="--teacher",
        num_classes=10,
        in_channels=1,
        trust=True,
        image_size=16,
    )
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(again(x), student.eval()(x))


def test_whole_pickled_network_needs_trust(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )
    torch.save(net, tmp_path / "whole.pt")
    with one_line("--teacher", "whole pickled network", "--trust-checkpoint"):
        resolve_network(str(tmp_path / "whole.pt"), role="--teacher", num_classes=10, in_channels=1)
    loaded = resolve_network(
        str(tmp_path / "whole.pt"), role="--teacher", num_classes=10, in_channels=1, image_size=8, trust=True
    )
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net(x))
    with one_line("gives 10 outputs per image, the data has 3 classes"):
        resolve_network(
            str(tmp_path / "whole.pt"),
            role="--teacher",
            num_classes=3,
            in_channels=1,
            image_size=8,
            trust=True,
        )


def test_a_module_itself_is_accepted():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    assert resolve_network(net, role="--student", num_classes=10, in_channels=1, image_size=4) is net
    with one_line("cannot take 1x8x8 images"):
        resolve_network(net, role="--student", num_classes=10, in_channels=1, image_size=8)


# ------------------------------------------------------------------------------ timm


def test_timm_adapter_with_a_fake_timm(monkeypatch):
    calls = []

    class FakeTimmNet(nn.Module):
        def __init__(self, num_classes, in_chans):
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 8, 3, padding=1)
            self.stages = nn.Sequential(
                nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
            )
            self.head = nn.Linear(8, num_classes)
            self.feature_info = [{"num_chs": 8, "reduction": 2**i, "module": f"stages.{i}"} for i in range(3)]

        def forward(self, x):
            return self.head(self.stages(self.stem(x)).mean((2, 3)))

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        if name != "fakenet":
            raise RuntimeError(f"Unknown model ({name})")
        return FakeTimmNet(**kwargs)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = resolve_network("timm:fakenet", role="--student", num_classes=7, in_channels=1, image_size=16)
    assert calls == [("fakenet", False, {"num_classes": 7, "in_chans": 1})]
    _, maps = with_features(model)(torch.randn(2, 1, 16, 16))  # feature_info's stages by default
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 8, 8), (8, 4, 4), (8, 2, 2)]
    with one_line("timm:nope", "timm could not build it", "Unknown model (nope)"):
        resolve_network("timm:nope", role="--student", num_classes=7, in_channels=1)
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed: the import fails
    with one_line("--student timm:resnet18 needs timm", "pip install 'zskt[timm]'"):
        resolve_network("timm:resnet18", role="--student", num_classes=10, in_channels=3)


# ------------------------------------------------------------------------------ zskt list, zskt train


def test_zskt_list_shows_the_models_and_the_spec_forms(capsys):
    from zskt.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for words in (
        "resnet-34",
        "21,282,122",
        "resnet-18",
        "11,173,962",
        "vgg-11",
        "9,231,114",
        "wrn-40-2",
        "wrn-DEPTH-WIDTH",
        "module:callable",
        "timm:NAME",
    ):
        assert words in out


def test_zskt_train_any_wide_resnet(tmp_path, capsys):
    from zskt.cli import main

    argv = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "wrn-10-1",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    assert main(argv) == 0
    model = load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, WideResNet) and (model.depth, model.widen_factor) == (10, 1)


def test_layer_option_parsing_and_labels(factory_file):
    from zskt.models import network_label, parse_layers

    assert parse_layers(" layer2, layer3 ,,layer4 ") == ("layer2", "layer3", "layer4")
    assert parse_layers("") is None and parse_layers(None) is None
    assert network_label(build_model("resnet-34"), "resnet34") == "resnet-34"
    assert network_label(build_model("wrn-28-2"), "wrn-28-2") == "wrn-28-2"
    small = resolve_network(f"{factory_file}:make", role="--student", num_classes=10, in_channels=1)
    assert network_label(small, f"{factory_file}:make") == "make"
    assert network_label(nn.Linear(2, 2), "timm:resnet18") == "timm-resnet18"


def test_a_custom_data_set_recorded_relative_matches_its_absolute_spelling():
    from zskt.models.checkpoints import same_dataset

    assert same_dataset("npz:digits16.npz", "npz:/tmp/own/digits16.npz")
    assert same_dataset("folder:sets/mine/", "folder:/data/sets/mine")
    assert not same_dataset("npz:digits16.npz", "npz:other.npz")
    assert not same_dataset("npz:digits16.npz", "folder:digits16.npz")
    assert not same_dataset("cifar10", "cifar100")
