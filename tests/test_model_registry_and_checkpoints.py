"""The model registry, the timm adapter, and strict loading of reference-format checkpoints."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from distill.errors import CheckpointError, UnknownNameError
from distill.models import FeatureRecord, create_model, is_model, list_models
from distill.models.checkpoint import load_weights

REFERENCE_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16",
    "vgg19", "ResNet18", "ResNet34", "ResNet50", "MobileNetV2", "ShuffleV1", "ShuffleV2",
]


def test_the_zoo_holds_every_reference_name():
    assert sorted(list_models()) == sorted(REFERENCE_NAMES)


def test_unknown_model_lists_the_closest_names():
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet8x5")
    assert "Did you mean 'resnet8x4'" in str(info.value)


def test_num_classes_sizes_the_classifier():
    assert create_model("resnet8", num_classes=10)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


class Opaque:
    """Not a tensor or container: safe loading must refuse a pickle holding it."""


def reference_checkpoint(model: torch.nn.Module, path: Path, old_torch: bool = True) -> Path:
    """A file laid out like RepDistiller's ckpt_epoch_240.pth (epoch, model, accuracy, optimizer).

    With ``old_torch`` the BatchNorm ``num_batches_tracked`` buffers are dropped,
    as in files saved by torch 0.4.0, and the state_dict is a plain OrderedDict.
    """
    state = collections.OrderedDict(
        (k, v.clone()) for k, v in model.state_dict().items() if not (old_torch and k.endswith("num_batches_tracked"))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(79.42), "optimizer": optimizer.state_dict()}, path)
    return path


@pytest.mark.parametrize("arch", ["resnet32x4", "wrn_40_2", "vgg13", "ShuffleV2"])
def test_reference_checkpoint_round_trips_strictly(arch, tmp_path):
    torch.manual_seed(0)
    source = create_model(arch)
    with torch.no_grad():  # make the BN buffers non-trivial so a silent skip would show
        for name, buffer in source.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-1, 1)
    path = reference_checkpoint(source, tmp_path / "ckpt_epoch_240.pth")
    loaded = create_model(arch, checkpoint=path)
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 3, 32, 32)
    source.eval(), loaded.eval()
    assert torch.equal(source(x), loaded(x))


def test_module_prefix_and_bare_state_dicts_load(tmp_path):
    model = create_model("resnet8")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    for name in ("ddp.pth", "bare.pth"):
        load_weights(create_model("resnet8"), tmp_path / name)


def test_wrong_architecture_names_the_mismatching_keys(tmp_path):
    path = reference_checkpoint(create_model("resnet8"), tmp_path / "r8.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("resnet20", checkpoint=path)
    assert "missing keys: layer1.1." in str(info.value)
    path = reference_checkpoint(create_model("resnet8", num_classes=10), tmp_path / "r8c10.pth")
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(10, 64\) vs model \(100, 64\)"):
        create_model("resnet8", checkpoint=path)


def test_unsafe_truncated_and_missing_files_are_refused(tmp_path):
    torch.save({"model": Opaque()}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        create_model("resnet8", checkpoint=tmp_path / "code.pth")
    good = reference_checkpoint(create_model("resnet8"), tmp_path / "good.pth")
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        create_model("resnet8", checkpoint=tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("resnet8", checkpoint=tmp_path / "absent.pth")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no state_dict"):
        create_model("resnet8", checkpoint=tmp_path / "nostate.pth")


def test_timm_models_answer_with_the_same_feature_record(tmp_path):
    assert is_model("timm/resnet18") and not is_model("timm/not_a_model")
    model = create_model("timm/resnet18", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    record = model(x, features=True)
    assert isinstance(record, FeatureRecord)
    assert [m.shape[1] for m in record.maps] == [64, 64, 128, 256, 512]
    assert record.pooled.shape == (2, 512) and record.logits.shape == (2, 7)
    assert torch.allclose(model(x), record.logits, atol=1e-6)
    assert torch.equal(model.feature_record(x).logits, record.logits)
    assert not hasattr(model, "forward_features")  # timm's name (the unpooled map) is not ours: one meaning per name
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    reloaded = create_model("timm/resnet18", num_classes=7, checkpoint=tmp_path / "timm.pth").eval()
    assert torch.equal(reloaded(x), model(x))


def test_timm_unknown_name_and_pretrained_are_refused():
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("timm/resnet18x")
    with pytest.raises(Exception, match="not fetched"):
        create_model("timm/resnet18", pretrained=True)


def test_a_temporary_registration_can_be_undone():
    from distill.models import register_model
    from distill.models.registry import MODELS

    def temporary(num_classes: int = 100) -> None:
        """Never built: registered and removed."""

    register_model("test_temporary_net")(temporary)
    assert "test_temporary_net" in list_models()
    MODELS.unregister("test_temporary_net")
    assert "test_temporary_net" not in list_models()
    with pytest.raises(UnknownNameError, match="test_temporary_net"):
        MODELS.unregister("test_temporary_net")
