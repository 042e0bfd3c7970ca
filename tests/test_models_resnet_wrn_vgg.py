"""CIFAR ResNet, WRN and VGG of the zoo against the CRD reference (RepDistiller).

Expected numbers come from the reference notes, cifar100-benchmark.md §3.1
(measured on RepDistiller's own models): trainable parameters, state_dict key
counts and feature shapes must match exactly so published teachers load strictly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.models.features import FeatureRecord
from distill.models.registry import MODELS
from distill.models.resnet import ResNet
from distill.models.vgg import VGG, VGG_CONFIGS
from distill.models.wrn import WideResNet

NUM_CLASSES = 100
BATCH = 2

RESNET_SHAPES = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
RESNET_X4_SHAPES = [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
WRN_K1_SHAPES = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
WRN_K2_SHAPES = [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
VGG_SHAPES = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]

# Reference §3.1: name -> (params, state_dict keys, keys without num_batches_tracked,
# map shapes, pooled shape).
REFERENCE_TABLE: dict[str, tuple[int, int, int, list[tuple[int, ...]], tuple[int, ...]]] = {
    "resnet8x4": (1_233_540, 62, 52, RESNET_X4_SHAPES, (256,)),
    "resnet20": (278_324, 128, 107, RESNET_SHAPES, (64,)),
    "resnet32": (472_756, 200, 167, RESNET_SHAPES, (64,)),
    "resnet56": (861_620, 344, 287, RESNET_SHAPES, (64,)),
    "resnet110": (1_736_564, 668, 557, RESNET_SHAPES, (64,)),
    "resnet32x4": (7_433_860, 206, 172, RESNET_X4_SHAPES, (256,)),
    "wrn_16_2": (703_284, 83, 70, WRN_K2_SHAPES, (128,)),
    "wrn_40_1": (569_780, 226, 189, WRN_K1_SHAPES, (64,)),
    "wrn_40_2": (2_255_156, 227, 190, WRN_K2_SHAPES, (128,)),
    "vgg8": (3_965_028, 37, 32, VGG_SHAPES, (512,)),
    "vgg13": (9_462_180, 72, 62, VGG_SHAPES, (512,)),
}

# Models without a table entry: name -> (maps, pooled).
UNTABLED: dict[str, tuple[list[tuple[int, ...]], tuple[int, ...]]] = {
    "resnet8": (RESNET_SHAPES, (64,)),
    "resnet14": (RESNET_SHAPES, (64,)),
    "resnet44": (RESNET_SHAPES, (64,)),
    "wrn_16_1": (WRN_K1_SHAPES, (64,)),
    "vgg11": (VGG_SHAPES, (512,)),
    "vgg16": (VGG_SHAPES, (512,)),
    "vgg19": (VGG_SHAPES, (512,)),
}

ALL_NAMES = sorted([*REFERENCE_TABLE, *UNTABLED])


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.get(name)(num_classes=NUM_CLASSES)


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_dict_key_counts(model: nn.Module) -> tuple[int, int]:
    keys = list(model.state_dict())
    return len(keys), sum(1 for k in keys if not k.endswith("num_batches_tracked"))


@torch.no_grad()
def eval_record(model: nn.Module, size: int = 32) -> FeatureRecord:
    model.eval()
    torch.manual_seed(1)
    return model(torch.randn(BATCH, 3, size, size), features=True)


# --- Hand-derived parameter counts -------------------------------------------------


def conv3x3_params(cin: int, cout: int, bias: bool = False) -> int:
    return 9 * cin * cout + (cout if bias else 0)


def bn_params(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


def linear_params(cin: int, cout: int) -> int:
    return cin * cout + cout


def cifar_resnet_params(depth: int, widths: tuple[int, int, int, int], classes: int) -> int:
    """Stem conv+BN; per block 2×(conv3x3+BN), and a 1×1 conv+BN shortcut on a shape change."""
    n = (depth - 2) // 6
    stem, *stages = widths
    total = conv3x3_params(3, stem) + bn_params(stem)
    cin = stem
    for stage_index, width in enumerate(stages):
        for block_index in range(n):
            block_in = cin if block_index == 0 else width
            total += conv3x3_params(block_in, width) + bn_params(width)
            total += conv3x3_params(width, width) + bn_params(width)
            stride = 2 if (stage_index > 0 and block_index == 0) else 1
            if block_in != width or stride != 1:
                total += block_in * width + bn_params(width)
        cin = width
    return total + linear_params(stages[-1], classes)


def wrn_params(depth: int, k: int, classes: int) -> int:
    """Stem conv (no BN); per block BN+conv3x3+BN+conv3x3, plus a 1×1 conv (no BN) on a shape
    change; final BN; fc."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = conv3x3_params(3, 16)
    for group in range(3):
        cin, cout = widths[group], widths[group + 1]
        for block_index in range(n):
            block_in = cin if block_index == 0 else cout
            total += bn_params(block_in) + conv3x3_params(block_in, cout)
            total += bn_params(cout) + conv3x3_params(cout, cout)
            if block_in != cout or (group > 0 and block_index == 0):
                total += block_in * cout
    return total + bn_params(widths[3]) + linear_params(widths[3], classes)


def vgg_params(config: tuple[tuple[int, ...], ...], classes: int) -> int:
    """Every conv3x3 has a bias and a BN; then Linear(512, classes)."""
    total, cin = 0, 3
    for block in config:
        for width in block:
            total += conv3x3_params(cin, width, bias=True) + bn_params(width)
            cin = width
    return total + linear_params(512, classes)


def test_resnet8_param_count_by_hand() -> None:
    stem = 3 * 16 * 9 + 2 * 16  # conv1 432 + bn1 32
    layer1 = 2 * (16 * 16 * 9 + 2 * 16)  # one block 16->16, no shortcut: 4672
    layer2 = (16 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + (16 * 32 + 2 * 32)  # 14528
    layer3 = (32 * 64 * 9 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + (32 * 64 + 2 * 64)  # 57728
    fc = 64 * 100 + 100  # 6500
    expected = stem + layer1 + layer2 + layer3 + fc
    assert expected == 83_892
    assert trainable_params(build("resnet8")) == expected
    assert cifar_resnet_params(8, (16, 16, 32, 64), 100) == expected


def test_vgg11_param_count_by_hand() -> None:
    # conv3x3 with bias + BN (2 per channel), config A: [64], [128], [256,256], [512,512], [512,512]
    block0 = (3 * 64 * 9 + 64) + 2 * 64  # 1920
    block1 = (64 * 128 * 9 + 128) + 2 * 128  # 74112
    block2 = (128 * 256 * 9 + 256) + 2 * 256 + (256 * 256 * 9 + 256) + 2 * 256  # 886272
    block3 = (256 * 512 * 9 + 512) + 2 * 512 + (512 * 512 * 9 + 512) + 2 * 512  # 3542016
    block4 = 2 * ((512 * 512 * 9 + 512) + 2 * 512)  # 4721664
    classifier = 512 * 100 + 100  # 51300
    expected = block0 + block1 + block2 + block3 + block4 + classifier
    assert expected == 9_277_284
    assert trainable_params(build("vgg11")) == expected
    assert vgg_params(VGG_CONFIGS["A"], 100) == expected


def test_wrn_16_1_param_count_by_hand() -> None:
    stem = 3 * 16 * 9  # 432, no BN
    group1 = 2 * (2 * 16 + 16 * 16 * 9 + 2 * 16 + 16 * 16 * 9)  # 16->16 twice, no shortcut: 9344
    group2 = (2 * 16 + 16 * 32 * 9 + 2 * 32 + 32 * 32 * 9 + 16 * 32) + (
        2 * 32 + 32 * 32 * 9 + 2 * 32 + 32 * 32 * 9
    )  # 32992
    group3 = (2 * 32 + 32 * 64 * 9 + 2 * 64 + 64 * 64 * 9 + 32 * 64) + (
        2 * 64 + 64 * 64 * 9 + 2 * 64 + 64 * 64 * 9
    )  # 131520
    head = 2 * 64 + 64 * 100 + 100  # final BN + fc
    expected = stem + group1 + group2 + group3 + head
    assert expected == 180_916
    assert trainable_params(build("wrn_16_1")) == expected
    assert wrn_params(16, 1, 100) == expected


FORMULAS = {
    "resnet8": lambda: cifar_resnet_params(8, (16, 16, 32, 64), 100),
    "resnet14": lambda: cifar_resnet_params(14, (16, 16, 32, 64), 100),
    "resnet20": lambda: cifar_resnet_params(20, (16, 16, 32, 64), 100),
    "resnet32": lambda: cifar_resnet_params(32, (16, 16, 32, 64), 100),
    "resnet44": lambda: cifar_resnet_params(44, (16, 16, 32, 64), 100),
    "resnet56": lambda: cifar_resnet_params(56, (16, 16, 32, 64), 100),
    "resnet110": lambda: cifar_resnet_params(110, (16, 16, 32, 64), 100),
    "resnet8x4": lambda: cifar_resnet_params(8, (32, 64, 128, 256), 100),
    "resnet32x4": lambda: cifar_resnet_params(32, (32, 64, 128, 256), 100),
    "wrn_16_1": lambda: wrn_params(16, 1, 100),
    "wrn_16_2": lambda: wrn_params(16, 2, 100),
    "wrn_40_1": lambda: wrn_params(40, 1, 100),
    "wrn_40_2": lambda: wrn_params(40, 2, 100),
    "vgg8": lambda: vgg_params(VGG_CONFIGS["S"], 100),
    "vgg11": lambda: vgg_params(VGG_CONFIGS["A"], 100),
    "vgg13": lambda: vgg_params(VGG_CONFIGS["B"], 100),
    "vgg16": lambda: vgg_params(VGG_CONFIGS["D"], 100),
    "vgg19": lambda: vgg_params(VGG_CONFIGS["E"], 100),
}


def test_formulas_reproduce_reference_table() -> None:
    # The hand formulas agree with the measured reference counts, so they can be trusted elsewhere.
    for name, (params, *_rest) in REFERENCE_TABLE.items():
        assert FORMULAS[name]() == params, name


# --- Reference table ---------------------------------------------------------------


def test_all_builders_registered() -> None:
    for name in ALL_NAMES:
        assert name in MODELS, name


@pytest.mark.parametrize("name", sorted(REFERENCE_TABLE))
def test_params_and_state_dict_keys_match_reference(name: str) -> None:
    params, keys, keys_without_nbt, _maps, _pooled = REFERENCE_TABLE[name]
    model = build(name)
    assert trainable_params(model) == params
    assert sum(p.numel() for p in model.parameters()) == params  # nothing frozen
    assert state_dict_key_counts(model) == (keys, keys_without_nbt)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_feature_record_shapes(name: str) -> None:
    maps, pooled = REFERENCE_TABLE[name][3:] if name in REFERENCE_TABLE else UNTABLED[name]
    model = build(name)
    record = eval_record(model)
    assert isinstance(record, FeatureRecord)
    assert [tuple(m.shape) for m in record.maps] == [(BATCH, *s) for s in maps]
    assert [m.shape for m in record.preact_maps] == [m.shape for m in record.maps]
    assert tuple(record.pooled.shape) == (BATCH, *pooled)
    assert tuple(record.logits.shape) == (BATCH, NUM_CLASSES)
    assert len(record.reference_list()) == len(maps) + 1
    with torch.no_grad():
        torch.manual_seed(1)
        logits = model(torch.randn(BATCH, 3, 32, 32))
    assert torch.equal(logits, record.logits)


@pytest.mark.parametrize("name", sorted(UNTABLED))
def test_untabled_param_counts(name: str) -> None:
    model = build(name)
    assert trainable_params(model) == FORMULAS[name]()


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8"])
def test_num_classes(name: str) -> None:
    model = MODELS.get(name)(num_classes=10)
    assert eval_record(model).logits.shape == (BATCH, 10)


# --- state_dict key names (reference §3.3) -----------------------------------------


def test_resnet_key_names() -> None:
    keys56 = set(build("resnet56").state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer3.0.downsample.0.weight",
        "layer3.8.bn2.running_var",
        "layer3.8.bn2.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys56, key
    assert not any(k.startswith("layer1.0.downsample") for k in keys56)
    assert not any(k.startswith("layer3.9.") for k in keys56)

    for name in ("resnet8x4", "resnet32x4"):
        keys = set(build(name).state_dict())
        assert "layer1.0.downsample.0.weight" in keys  # 32 -> 64 channels
        assert "layer1.0.downsample.1.bias" in keys
    shapes = {k: tuple(v.shape) for k, v in build("resnet32x4").state_dict().items()}
    assert shapes["conv1.weight"] == (32, 3, 3, 3)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 32, 1, 1)
    assert shapes["layer3.4.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["fc.weight"] == (100, 256)


def test_wrn_key_names() -> None:
    keys_40_1 = set(build("wrn_40_1").state_dict())
    keys_40_2 = set(build("wrn_40_2").state_dict())
    for keys in (keys_40_1, keys_40_2):
        for key in (
            "conv1.weight",
            "block1.layer.0.bn1.weight",
            "block1.layer.5.conv2.weight",
            "block2.layer.0.convShortcut.weight",
            "block3.layer.0.convShortcut.weight",
            "block3.layer.5.bn2.running_var",
            "bn1.num_batches_tracked",
            "fc.weight",
            "fc.bias",
        ):
            assert key in keys, key
        assert "conv1.bias" not in keys
        assert not any("convShortcut" in k and ".layer.0." not in k for k in keys)
    # wrn_40_1's first group maps 16 -> 16 channels and needs no shortcut conv.
    assert "block1.layer.0.convShortcut.weight" not in keys_40_1
    assert "block1.layer.0.convShortcut.weight" in keys_40_2
    shapes = {k: tuple(v.shape) for k, v in build("wrn_40_2").state_dict().items()}
    assert shapes["block1.layer.0.convShortcut.weight"] == (32, 16, 1, 1)
    assert shapes["block3.layer.0.convShortcut.weight"] == (128, 64, 1, 1)
    assert shapes["fc.weight"] == (100, 128)


def test_vgg_key_names() -> None:
    keys13 = set(build("vgg13").state_dict())
    for key in (
        "block0.0.weight",
        "block0.0.bias",
        "block0.1.running_mean",
        "block0.3.weight",
        "block0.4.bias",
        "block4.4.num_batches_tracked",
        "classifier.weight",
        "classifier.bias",
    ):
        assert key in keys13, key
    assert not any(k.startswith(f"block{b}.5") for b in range(5) for k in keys13)
    keys8 = set(build("vgg8").state_dict())
    assert "block4.1.running_var" in keys8
    assert not any(k.startswith("block0.3") for k in keys8)
    shapes = {k: tuple(v.shape) for k, v in build("vgg8").state_dict().items()}
    assert shapes["block0.0.bias"] == (64,)
    assert shapes["block3.0.weight"] == (512, 256, 3, 3)
    assert shapes["classifier.weight"] == (100, 512)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8"])
def test_state_dict_round_trip_strict(name: str) -> None:
    source, target = build(name), build(name)
    for p in source.parameters():
        p.data.add_(0.5)
    target.load_state_dict(source.state_dict(), strict=True)
    for (k1, v1), (k2, v2) in zip(source.state_dict().items(), target.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


# --- Pre-activation semantics ------------------------------------------------------


def test_resnet_preact() -> None:
    record = eval_record(build("resnet20"))
    assert record.preact_maps[0] is record.maps[0]  # the stem has no pre-activation map
    for pre, post in zip(record.preact_maps[1:], record.maps[1:]):
        assert torch.equal(F.relu(pre), post)
        assert (pre < 0).any()  # really taken before the ReLU


def test_resnet_preact_is_last_block_sum() -> None:
    model = build("resnet8x4").eval()
    seen: dict[str, torch.Tensor] = {}
    last_bn = model.layer3[-1].bn2
    last_bn.register_forward_hook(lambda _m, _i, out: seen.setdefault("bn2", out.clone()))
    record = eval_record(model)
    identity = model.layer3[0].downsample(record.maps[2])  # one block per stage: its shortcut
    assert torch.allclose(record.preact_maps[3], seen["bn2"] + identity, atol=1e-5)


def test_vgg_preact() -> None:
    record = eval_record(build("vgg13"))
    assert record.preact_maps[0] is record.maps[0]  # block0 is always reported post-ReLU
    assert (record.maps[0] >= 0).all()
    for pre, post in zip(record.preact_maps[1:], record.maps[1:]):
        assert torch.equal(F.relu(pre), post)
        assert (pre < 0).any()


@pytest.mark.parametrize("name", ["wrn_16_2", "wrn_40_1"])
def test_wrn_preact_equals_next_bn(name: str) -> None:
    model = build(name)
    model.train()
    with torch.no_grad():  # give the BNs non-trivial running statistics
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = eval_record(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert record.preact_maps[0] is record.maps[0]
    with torch.no_grad():
        expected = [
            model.block2.layer[0].bn1(record.maps[1]),
            model.block3.layer[0].bn1(record.maps[2]),
            model.bn1(record.maps[3]),
        ]
    for pre, exp, post in zip(record.preact_maps[1:], expected, record.maps[1:]):
        assert torch.allclose(pre, exp, atol=1e-5)
        assert not torch.allclose(pre, post)
    pooled = F.relu(record.preact_maps[3]).mean(dim=(2, 3))
    assert torch.allclose(record.pooled, pooled, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8"])
def test_each_batchnorm_runs_once_per_forward(name: str) -> None:
    model = build(name).train()
    model(torch.randn(BATCH, 3, 32, 32), features=True)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.num_batches_tracked.item() == 1, module_name


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8"])
def test_backward_through_all_features(name: str) -> None:
    # Catches in-place activations that would corrupt a kept (pre-activation) tensor.
    model = build(name).train()
    record = model(torch.randn(BATCH, 3, 32, 32), features=True)
    loss = record.logits.sum() + record.pooled.sum()
    loss = loss + sum(m.pow(2).mean() for m in [*record.maps, *record.preact_maps])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- Spatial quirks, init, feature modules -----------------------------------------


def test_vgg_pool3_only_at_64px() -> None:
    model = build("vgg8")
    at32 = eval_record(model, 32)
    at64 = eval_record(model, 64)
    assert at32.maps[3].shape[-2:] == at32.maps[4].shape[-2:] == (4, 4)
    assert at64.maps[3].shape[-2:] == (8, 8)
    assert at64.maps[4].shape[-2:] == (4, 4)


def test_resnet_init() -> None:
    model = build("resnet56")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    conv = model.layer3[1].conv1  # kaiming normal, fan_out = 9 * 64
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)


def test_wrn_init() -> None:
    model = build("wrn_40_2")
    conv = model.block3.layer[1].conv1
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.05)
    assert torch.all(model.fc.bias == 0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_vgg_init() -> None:
    model = build("vgg13")
    conv = model.block4[3]
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.05)
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(model.classifier.bias == 0)


@pytest.mark.parametrize(
    ("name", "cls", "n_modules"),
    [("resnet20", ResNet, 6), ("wrn_40_1", WideResNet, 4), ("vgg11", VGG, 10)],
)
def test_feature_modules(name: str, cls: type, n_modules: int) -> None:
    model = build(name)
    assert isinstance(model, cls)
    modules = model.feature_modules()
    assert len(modules) == n_modules
    owned = {id(p) for m in modules for p in m.parameters()}
    head = model.classifier if isinstance(model, VGG) else model.fc
    assert not any(id(p) in owned for p in head.parameters())
    # Everything but the head (and WRN's final BN, as in the reference) is covered.
    rest = {id(p) for p in model.parameters()} - owned - {id(p) for p in head.parameters()}
    is_wrn = isinstance(model, WideResNet)
    expected_rest = {id(p) for p in model.bn1.parameters()} if is_wrn else set()
    assert rest == expected_rest
