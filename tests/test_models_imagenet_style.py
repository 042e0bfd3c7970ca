"""The ImageNet-family CIFAR models: ResNet18/34/50, MobileNetV2, ShuffleV1, ShuffleV2.

Expected numbers come from the reference table (cifar100-benchmark.md §3.1 and
§3.3), measured on RepDistiller's own models: matching parameter counts,
state_dict keys and feature shapes is what lets its teacher checkpoints load
strictly and its feature-based losses see the same tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from distill.models import FeatureRecord, create_model, is_model
from distill.models.shufflenet_stage import channel_shuffle

NUM_CLASSES = 100
BATCH = 2

# name: (trainable params, state_dict keys, keys without num_batches_tracked, feats shapes (maps..., pooled))
REFERENCE_TABLE: dict[str, tuple[int, int, int, list[tuple[int, ...]]]] = {
    "ResNet50": (
        23_705_252,
        320,
        267,
        [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (2048,)],
    ),
    "MobileNetV2": (
        812_836,
        320,
        267,
        [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)],
    ),
    "ShuffleV1": (949_258, 296, 247, [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)]),
    "ShuffleV2": (1_355_528, 338, 282, [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)]),
}
TABLE_MODELS = list(REFERENCE_TABLE)
ALL_MODELS = ["ResNet18", "ResNet34", *TABLE_MODELS]

_models: dict[str, nn.Module] = {}
_records: dict[str, FeatureRecord] = {}


def get_model(name: str) -> nn.Module:
    """Each model is built once per test session (ResNet50 takes a while to initialise)."""
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = create_model(name, num_classes=NUM_CLASSES).eval()
    return _models[name]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def get_record(name: str, images: torch.Tensor) -> FeatureRecord:
    if name not in _records:
        with torch.no_grad():
            _records[name] = get_model(name)(images, features=True)
    return _records[name]


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_registered(name: str) -> None:
    assert is_model(name)


@pytest.mark.parametrize("name", TABLE_MODELS)
def test_parameter_and_key_counts_match_reference(name: str) -> None:
    params, keys, keys_without_nbt, _ = REFERENCE_TABLE[name]
    model = get_model(name)
    state = model.state_dict()
    assert trainable_params(model) == params
    assert len(state) == keys
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == keys_without_nbt


@pytest.mark.parametrize("name", TABLE_MODELS)
def test_feature_shapes_match_reference(name: str, images: torch.Tensor) -> None:
    record = get_record(name, images)
    expected = REFERENCE_TABLE[name][3]
    assert [tuple(f.shape[1:]) for f in record.reference_list()] == expected
    assert [m.shape for m in record.preact_maps] == [m.shape for m in record.maps]
    assert record.pooled.shape == (BATCH, expected[-1][0])
    assert record.logits.shape == (BATCH, NUM_CLASSES)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_plain_forward_returns_the_record_logits(name: str, images: torch.Tensor) -> None:
    with torch.no_grad():
        logits = get_model(name)(images)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, get_record(name, images).logits)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        (
            "ResNet50",
            [
                "layer1.0.shortcut.0.weight",
                "layer1.0.shortcut.1.running_var",
                "layer4.2.bn3.bias",
                "linear.weight",
            ],
        ),
        (
            "MobileNetV2",
            [
                "blocks.0.0.conv.0.weight",
                "blocks.6.0.conv.7.running_mean",
                "conv2.0.weight",
                "classifier.0.weight",
            ],
        ),
        ("ShuffleV1", ["layer3.3.bn3.bias", "layer1.0.conv1.weight", "linear.bias"]),
        ("ShuffleV2", ["layer2.7.conv3.weight", "layer1.0.conv5.weight", "bn2.running_var", "linear.weight"]),
    ],
)
def test_reference_key_names(name: str, keys: list[str]) -> None:
    state = get_model(name).state_dict()
    for key in keys:
        assert key in state, key
    assert not any(k.startswith("module.") for k in state)


def test_reference_key_shapes() -> None:
    """A few shapes that pin down the less obvious layers (group convs, the t = 1 expansion)."""
    v1 = get_model("ShuffleV1").state_dict()
    assert v1["layer1.0.conv1.weight"].shape == (54, 24, 1, 1)  # first unit: 1x1 conv not grouped
    assert v1["layer1.0.conv3.weight"].shape == (216, 18, 1, 1)  # 240 - 24 branch channels, 3 groups
    assert v1["layer2.1.conv1.weight"].shape == (120, 160, 1, 1)  # 480 / 3 input channels per group
    mobile = get_model("MobileNetV2").state_dict()
    assert mobile["blocks.0.0.conv.0.weight"].shape == (16, 16, 1, 1)  # t = 1 still expands
    assert mobile["blocks.6.0.conv.6.weight"].shape == (160, 480, 1, 1)
    v2 = get_model("ShuffleV2").state_dict()
    assert v2["layer1.0.conv1.weight"].shape == (24, 1, 3, 3)
    assert v2["layer3.3.conv2.weight"].shape == (232, 1, 3, 3)
    assert get_model("ResNet50").state_dict()["layer2.0.shortcut.0.weight"].shape == (512, 256, 1, 1)


def test_state_dict_loads_strictly_into_a_fresh_model() -> None:
    source = get_model("ShuffleV1")
    target = create_model("ShuffleV1", num_classes=NUM_CLASSES)
    target.load_state_dict(source.state_dict(), strict=True)
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


@pytest.mark.parametrize("name", ["ResNet18", "ResNet50", "ShuffleV1"])
def test_preact_maps_are_the_stage_sums_before_relu(name: str, images: torch.Tensor) -> None:
    record = get_record(name, images)
    assert record.preact_maps[0] is record.maps[0]  # the stem has no pre-activation
    for preact, out in zip(record.preact_maps[1:], record.maps[1:]):
        assert (preact < 0).any()
        torch.testing.assert_close(F.relu(preact), out)


def test_shufflenetv2_preact_is_identity_half_and_unshuffled_branch(images: torch.Tensor) -> None:
    """Reference semantics: cat(identity half, pre-ReLU branch), taken before the shuffle."""
    model = get_model("ShuffleV2")
    unit_inputs: list[torch.Tensor] = []
    hooks = [
        stage[-1].register_forward_hook(lambda module, args, output: unit_inputs.append(args[0]))
        for stage in (model.layer1, model.layer2, model.layer3)
    ]
    try:
        with torch.no_grad():
            record = model(images, features=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert record.preact_maps[0] is record.maps[0]
    for unit_input, preact, out in zip(unit_inputs, record.preact_maps[1:], record.maps[1:]):
        half = preact.shape[1] // 2
        torch.testing.assert_close(preact[:, :half], unit_input[:, :half])
        assert (preact[:, half:] < 0).any()
        torch.testing.assert_close(channel_shuffle(F.relu(preact), 2), out)


def test_mobilenetv2_maps_are_linear_bottlenecks(images: torch.Tensor) -> None:
    record = get_record("MobileNetV2", images)
    assert all(p is m for p, m in zip(record.preact_maps, record.maps))
    assert (record.maps[0] >= 0).all()  # the stem ends with a ReLU
    for m in record.maps[1:]:
        assert (m < 0).any()  # block outputs have no activation


def test_feature_modules_match_reference() -> None:
    resnet = get_model("ResNet50")
    assert resnet.feature_modules() == [
        resnet.conv1, resnet.bn1, resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
    ]
    mobile = get_model("MobileNetV2")
    assert mobile.feature_modules() == [mobile.conv1, mobile.blocks]
    for name in ("ShuffleV1", "ShuffleV2"):
        shuffle = get_model(name)
        expected = [shuffle.conv1, shuffle.bn1, shuffle.layer1, shuffle.layer2, shuffle.layer3]
        assert shuffle.feature_modules() == expected


def test_initialisation_schemes() -> None:
    resnet = get_model("ResNet50")
    weight = resnet.layer4[0].conv2.weight  # kaiming normal, fan_out = 512 * 3 * 3
    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / (512 * 9)), rel=0.02)
    assert torch.all(resnet.layer4[2].bn3.weight == 1)  # no zero-init of the last BN
    mobile = get_model("MobileNetV2")
    assert mobile.conv2[0].weight.std().item() == pytest.approx(math.sqrt(2.0 / 1280), rel=0.02)
    assert mobile.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(mobile.classifier[0].bias == 0)


def _basic_block_params(in_planes: int, planes: int) -> int:
    """Two 3x3 convs, two BNs (weight + bias), and a 1x1 conv + BN shortcut when the width changes."""
    params = in_planes * planes * 9 + planes * planes * 9 + 2 * (2 * planes)
    if in_planes != planes:
        params += in_planes * planes + 2 * planes
    return params


def test_resnet18_parameter_count_by_hand() -> None:
    # Every conv is bias-free; every BN has a weight and a bias; the shortcut is a 1x1 conv + BN.
    stem = 3 * 64 * 9 + 2 * 64  # conv 1,728 + BN 128 = 1,856
    # layer1: two 64->64 blocks, each 2 convs of 36,864 + 2 BNs of 128 = 73,984
    layer1 = 2 * (2 * 64 * 64 * 9 + 4 * 64)  # 147,968
    # layer2: 64->128 (73,728 + 147,456 + BNs 512 + shortcut 8,192 + 256) = 230,144,
    #         then 128->128 (2 * 147,456 + 512) = 295,424
    layer2 = (64 * 128 * 9 + 128 * 128 * 9 + 4 * 128 + 64 * 128 + 2 * 128) + (
        2 * 128 * 128 * 9 + 4 * 128
    )  # 525,568
    # layer3: 128->256 (294,912 + 589,824 + 1,024 + 32,768 + 512) = 919,040,
    #         then 256->256 (2 * 589,824 + 1,024) = 1,180,672
    layer3 = (128 * 256 * 9 + 256 * 256 * 9 + 4 * 256 + 128 * 256 + 2 * 256) + (
        2 * 256 * 256 * 9 + 4 * 256
    )  # 2,099,712
    # layer4: 256->512 (1,179,648 + 2,359,296 + 2,048 + 131,072 + 1,024) = 3,673,088,
    #         then 512->512 (2 * 2,359,296 + 2,048) = 4,720,640
    layer4 = (256 * 512 * 9 + 512 * 512 * 9 + 4 * 512 + 256 * 512 + 2 * 512) + (
        2 * 512 * 512 * 9 + 4 * 512
    )  # 8,393,728
    linear = 512 * 100 + 100  # 51,300
    expected = stem + layer1 + layer2 + layer3 + layer4 + linear
    # 11,220,132: the familiar 11,173,962 of CIFAR-10 ResNet-18, plus 90 * 513 for 90 more classes.
    assert expected == 11_220_132
    assert trainable_params(get_model("ResNet18")) == expected


def test_resnet34_parameter_count_by_hand() -> None:
    stem, linear = 3 * 64 * 9 + 2 * 64, 512 * 100 + 100
    blocks = 0
    in_planes = 64
    for planes, count in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        blocks += _basic_block_params(in_planes, planes) + (count - 1) * _basic_block_params(planes, planes)
        in_planes = planes
    assert trainable_params(get_model("ResNet34")) == stem + blocks + linear == 21_328_292


@pytest.mark.parametrize("name", ["ResNet18", "ResNet34"])
def test_basic_block_resnets_features(name: str, images: torch.Tensor) -> None:
    record = get_record(name, images)
    expected = [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)]
    assert [tuple(f.shape[1:]) for f in record.reference_list()] == expected
    assert [tuple(f.shape[1:]) for f in record.reference_list(preact=True)] == expected
    assert record.logits.shape == (BATCH, NUM_CLASSES)
    model = get_model(name)
    assert "layer2.0.shortcut.0.weight" in model.state_dict()
    assert "layer1.0.shortcut.0.weight" not in model.state_dict()  # 64 -> 64 needs no projection


def test_other_input_sizes_and_class_counts() -> None:
    """Global pooling makes the heads independent of the input size (the reference assumes 32 px)."""
    model = create_model("ShuffleV2", num_classes=10).eval()
    with torch.no_grad():
        record = model(torch.randn(1, 3, 64, 64), features=True)
    assert record.maps[-1].shape == (1, 464, 8, 8)
    assert record.pooled.shape == (1, 1024)
    assert record.logits.shape == (1, 10)
