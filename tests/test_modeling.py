"""trainer.modeling, model_source and simple_cnn: heads, weight sources, freezing, the Grad-CAM layer."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import safetensors.torch
import timm
import timm.models
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from tests.conftest import shared_path
from trainer.model_source import ModelSourceError, read_model_folder
from trainer.modeling import (
    DenseHead,
    HeadConfig,
    backbone_parameters,
    cam_target_layer,
    create_classifier,
    freeze_backbone,
    head_config,
    head_parameters,
    model_data_config,
    model_from_folder,
)
from trainer.simple_cnn import SimpleCNN

TINY_ARCHS = ["test_efficientnet", "test_resnet", "test_convnext", "chexlab_simple_cnn"]
HEADS = {
    "linear": HeadConfig(),
    "mlp": HeadConfig(type="mlp", widths=[16, 8], dropout=0.1),
    "dense_bn": HeadConfig(type="dense_bn"),
}
LABELS = ["Atelectasis", "Effusion", "Nodule"]


def _images(n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n * size))


def _save_chexlab_folder(model: nn.Module, folder: Path, labels: list[str]) -> Path:
    """A chexlab model folder the way export will write it: timm's Hub layout plus a chexlab block."""
    timm.models.save_for_hf(
        model,
        str(folder),
        model_config={
            "label_names": labels,
            "chexlab": {"task": "multilabel", "head": head_config(model).to_dict()},
        },
        safe_serialization=True,
    )
    return folder


def _fill_hub_cache(repo_id: str, files: dict[str, Path], commit: str = "a" * 40) -> Path:
    """The real huggingface_hub cache layout (models--org--name/snapshots/<commit>/..., refs/main)."""
    repo_dir = Path(hf_constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    head = {id(p) for p in head_parameters(model)}
    return {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in head}


# --- heads -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_type", list(HEADS))
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_head_gives_num_classes_outputs(arch: str, head_type: str) -> None:
    for num_classes in (1, 3):
        model = create_classifier(arch, num_classes, head=HEADS[head_type]).eval()
        assert model(_images(2)).shape == (2, num_classes)
        assert model.num_classes == num_classes
        classifier = model.get_classifier()
        assert isinstance(classifier, DenseHead if head_type != "linear" else nn.Linear)
        assert classifier.out_features == num_classes
        assert head_config(model) == HEADS[head_type]


def test_mlp_head_structure_matches_the_inceptionv3_nih15_recipe() -> None:
    head = HeadConfig(type="mlp", widths=[512, 128, 32], batch_norm_last=False)
    model = create_classifier("test_resnet", 15, head=head)
    sizes = {
        nn.Linear: lambda m: (m.in_features, m.out_features),
        nn.BatchNorm1d: lambda m: (m.num_features,),
    }
    described = [(type(m).__name__, *sizes.get(type(m), lambda m: ())(m)) for m in model.get_classifier()]
    assert described == [
        ("Linear", model.num_features, 512), ("ReLU",), ("BatchNorm1d", 512),
        ("Linear", 512, 128), ("ReLU",), ("BatchNorm1d", 128),
        ("Linear", 128, 32), ("ReLU",),
        ("Linear", 32, 15),
    ]  # fmt: skip
    # timm's pooling and pre-logits path stay in front of the head
    pooled = model.forward_head(model.forward_features(_images(2)), pre_logits=True)
    assert pooled.shape == (2, model.num_features)


def test_mlp_head_options() -> None:
    def kinds(head: HeadConfig) -> list[str]:
        return [type(m).__name__ for m in DenseHead(10, 2, head)]

    assert kinds(HeadConfig(type="mlp", widths=[4])) == ["Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert kinds(HeadConfig(type="mlp", widths=[4], batch_norm=False)) == ["Linear", "ReLU", "Linear"]
    assert kinds(HeadConfig(type="mlp", widths=[4, 3], batch_norm=False, dropout=0.5)) == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip


def test_dense_bn_head_is_dense_then_batchnorm_over_the_outputs() -> None:
    model = create_classifier("test_efficientnet", 14, head=HeadConfig(type="dense_bn"))
    dense, norm = list(model.get_classifier())
    assert isinstance(dense, nn.Linear)
    assert (dense.in_features, dense.out_features) == (model.num_features, 14)
    assert isinstance(norm, nn.BatchNorm1d) and norm.num_features == 14
    # it sits where timm's classifier was: after timm's global average pooling
    assert model.classifier is model.get_classifier()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(type="mpl"), "unknown head type 'mpl'"),
        (dict(type="mlp"), "needs positive hidden widths"),
        (dict(type="mlp", widths=[8, 0]), "needs positive hidden widths"),
        (dict(widths=[8]), "widths apply to type mlp only"),
        (dict(type="dense_bn", dropout=0.2), "use drop_rate"),
        (dict(type="mlp", widths=[8], dropout=1.0), "dropout must be in"),
    ],
)
def test_invalid_head_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeadConfig(**kwargs)


def test_head_config_dict_round_trip() -> None:
    head = HeadConfig(type="mlp", widths=[64, 32], batch_norm_last=False, dropout=0.25)
    assert HeadConfig.from_dict(head.to_dict()) == head
    assert HeadConfig.from_dict({}) == HeadConfig()
    with pytest.raises(ValueError, match="unknown head config keys \\['width'\\]"):
        HeadConfig.from_dict({"type": "mlp", "width": [8]})


def test_reset_classifier_gives_timm_a_fresh_linear_classifier() -> None:
    model = create_classifier("test_efficientnet", 3, head=HEADS["mlp"])
    model.reset_classifier(5)
    assert isinstance(model.get_classifier(), nn.Linear) and model.num_classes == 5
    assert model.eval()(_images(2)).shape == (2, 5)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="in_chans=1"):
        create_classifier("test_resnet", 2, in_chans=1)
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        create_classifier("test_resnet", 0)
    with pytest.raises(ValueError, match="not a Linear layer"):
        # DLA's classifier is a 1x1 convolution
        create_classifier("dla46_c", 2, head=HEADS["mlp"])


# --- freezing --------------------------------------------------------------------------------------------


def test_head_and_backbone_parameters_partition_the_model() -> None:
    model = create_classifier("test_convnext", 2, head=HEADS["mlp"])
    head, backbone = head_parameters(model), backbone_parameters(model)
    assert {id(p) for p in head} == {id(p) for p in model.head.fc.parameters()}
    assert {id(p) for p in head} | {id(p) for p in backbone} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in head} & {id(p) for p in backbone}


def _train_step(model: nn.Module, images: torch.Tensor, num_classes: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    targets = torch.arange(len(images)) % num_classes
    loss = nn.functional.cross_entropy(model(images), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("head_type", list(HEADS))
def test_frozen_backbone_trains_only_the_head_and_keeps_its_batchnorm_statistics(head_type: str) -> None:
    torch.manual_seed(0)
    model = create_classifier("test_efficientnet", 3, head=HEADS[head_type])
    freeze_backbone(model, True)
    model.train()  # what the engine calls every epoch: frozen BatchNorms must stay in eval mode anyway
    backbone = _backbone_state(model)
    head = [p.detach().clone() for p in head_parameters(model)]
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    _train_step(model, _images(4), 3)

    assert all(torch.equal(p, backbone[name]) for name, p in model.named_parameters() if name in backbone)
    assert all(not p.requires_grad for p in backbone_parameters(model))
    assert any(not torch.equal(p, old) for p, old in zip(head_parameters(model), head, strict=True))
    changed = {name for name, b in model.named_buffers() if not torch.equal(b, buffers[name])}
    # only the head's own BatchNorm (mlp, dense_bn) may update its running statistics
    assert all(name.startswith("classifier.") for name in changed)
    assert bool(changed) == (head_type != "linear")
    assert not model.bn1.training and model.training

    freeze_backbone(model, False)
    assert model.bn1.training
    assert all(p.requires_grad for p in model.parameters())
    _train_step(model, _images(4), 3)
    assert not torch.equal(model.conv_stem.weight, backbone["conv_stem.weight"])
    assert not torch.equal(model.bn1.running_mean, buffers["bn1.running_mean"])


def test_a_copy_of_a_frozen_model_can_be_unfrozen() -> None:
    import copy

    model = create_classifier("test_resnet", 2)
    freeze_backbone(model, True)
    clone = copy.deepcopy(model)
    freeze_backbone(clone, False)
    clone.train()
    clone(_images(2))
    assert clone.bn1.training
    model.train()
    model(_images(2))
    assert not model.bn1.training


# --- initial weights -------------------------------------------------------------------------------------


def test_init_from_the_real_lite0_file_keeps_imagenet_features_and_makes_a_new_head() -> None:
    path = shared_path("weights", "tf_efficientnet_lite0.in1k.timm.safetensors")
    weights = safetensors.torch.load_file(str(path))
    model = create_classifier("tf_efficientnet_lite0", 14, head=HEADS["dense_bn"], init=f"file:{path}")
    state = model.state_dict()
    backbone = [k for k in weights if not k.startswith("classifier.")]
    assert len(backbone) > 290
    assert all(torch.equal(state[k], weights[k]) for k in backbone)
    assert isinstance(model.classifier, DenseHead) and model.classifier.out_features == 14
    assert model_data_config(model)["mean"] == (0.5, 0.5, 0.5)  # the Lite family's own normalisation
    # the pooled features are exactly those of timm's own loading path for this file (SOURCE.md)
    reference = timm.create_model(
        "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0
    ).eval()
    images = _images(2, 96)
    features = model.eval().forward_head(model.forward_features(images), pre_logits=True)
    assert torch.allclose(features, reference(images))


def test_init_from_a_local_safetensors_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")  # 1000 ImageNet-style classes
    path = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = create_classifier("test_resnet", 2, init=f"file:{path}")
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert torch.equal(model.layer4[0].bn1.running_mean, source.layer4[0].bn1.running_mean)
    assert model.fc.out_features == 2
    with pytest.raises(ModelSourceError, match="has no prefix.*file:PATH.safetensors"):  # never guessed
        create_classifier("test_resnet", 2, init=str(path))
    # a file whose classifier already has the right size loads it too
    two = create_classifier("test_resnet", 2)
    safetensors.torch.save_file(two.state_dict(), str(path))
    assert torch.equal(create_classifier("test_resnet", 2, init=f"file:{path}").fc.weight, two.fc.weight)


def test_a_weights_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file(timm.create_model("test_resnet").state_dict(), str(path))
    with pytest.raises(ModelSourceError, match="does not fit architecture 'test_efficientnet'"):
        create_classifier("test_efficientnet", 2, init=f"file:{path}")


class _Payload:
    """Unpickling this creates a file: what a hostile checkpoint could do (with anything else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["weights.pth", "pytorch_model.bin", "model.ckpt", "model.pth.tar"])
def test_pickle_checkpoints_are_refused_unopened(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelSourceError, match="arbitrary code") as err:
        create_classifier("test_resnet", 2, init=f"file:{path}")
    assert "safetensors.torch.save_file" in str(err.value)
    with pytest.raises(ModelSourceError, match="has no prefix"):
        create_classifier("test_resnet", 2, init=str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("imagenet", "model source 'imagenet' has no prefix; valid: hf-hub:"),
        ("file:weights.txt", "not a .safetensors file"),
        ("hf-hub:../../etc", "not a Hugging Face Hub model id"),
        ("file:/nonexistent/w.safetensors", "does not exist"),
        ("hf-hub:", "not of the form"),
        ("local-dir:/nonexistent/model", "is not a directory"),
    ],
)
def test_unusable_init_strings_are_explained(init: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        create_classifier("test_resnet", 2, init=init)


def test_timm_pretrained_offline_says_what_to_do_instead() -> None:
    with pytest.raises(ModelSourceError, match="file:/path/to/weights.safetensors") as err:
        create_classifier("test_efficientnet", 2, init="timm")
    assert "online" in str(err.value)
    with pytest.raises(ModelSourceError, match="timm has no pretrained weights 'test_efficientnet.nope'"):
        create_classifier("test_efficientnet", 2, init="timm:nope")


# --- transfer from a saved chexlab model -----------------------------------------------------------------


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_local_dir_transfer_with_the_same_labels_copies_the_head(tmp_path: Path, head_type: str) -> None:
    torch.manual_seed(2)
    source = create_classifier("test_efficientnet", 3, head=HEADS[head_type]).eval()
    folder = _save_chexlab_folder(source, tmp_path / "model", LABELS)

    # head=None takes the saved model's head
    model = create_classifier("test_efficientnet", 3, init=f"local-dir:{folder}", label_names=LABELS).eval()
    images = _images(3)
    assert torch.equal(model(images), source(images))
    assert head_config(model) == HEADS[head_type]


def test_local_dir_transfer_with_other_labels_needs_new_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(3)
    source = create_classifier("test_efficientnet", 3)
    folder = _save_chexlab_folder(source, tmp_path / "model", LABELS)

    labels = ["Normal", "Pneumonia"]
    with pytest.raises(ModelSourceError, match="model.new_head"):
        create_classifier("test_efficientnet", 2, init=f"local-dir:{folder}", label_names=labels)
    with caplog.at_level(logging.INFO, logger="trainer.modeling"):
        model = create_classifier(
            "test_efficientnet", 2, init=f"local-dir:{folder}", label_names=["Normal", "Pneumonia"],
            head=HEADS["dense_bn"], new_head=True,
        )  # fmt: skip
    assert "head re-initialised" in caplog.text
    source_state, state = source.state_dict(), model.state_dict()
    backbone = [k for k in source_state if not k.startswith("classifier.")]
    assert all(torch.equal(state[k], source_state[k]) for k in backbone)
    assert isinstance(model.classifier, DenseHead) and model.classifier.out_features == 2

    # same number of classes, but other names: the head is new as well
    other = create_classifier(
        "test_efficientnet", 3, init=f"local-dir:{folder}", label_names=["x", "y", "z"], new_head=True
    )
    assert not torch.equal(other.classifier.weight, source.classifier.weight)
    assert torch.equal(other.conv_stem.weight, source.conv_stem.weight)


def test_transfer_across_architectures_is_refused(tmp_path: Path) -> None:
    folder = _save_chexlab_folder(create_classifier("test_efficientnet", 3), tmp_path / "model", LABELS)
    with pytest.raises(ModelSourceError, match="is a 'test_efficientnet' model .* 'test_resnet'"):
        create_classifier("test_resnet", 3, init=f"local-dir:{folder}", label_names=LABELS)


def test_hf_hub_transfer_reads_the_real_hub_cache_offline(tmp_path: Path) -> None:
    torch.manual_seed(4)
    source = create_classifier("chexlab_simple_cnn", 3, head=HEADS["dense_bn"]).eval()
    folder = _save_chexlab_folder(source, tmp_path / "model", LABELS)
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fill_hub_cache("chexlab/simple", {n: folder / n for n in ("config.json", "model.safetensors")}, commit)

    config, state_dict = read_model_folder("hf-hub:chexlab/simple")
    assert config["architecture"] == "chexlab_simple_cnn" and config["label_names"] == LABELS
    assert torch.equal(state_dict["stages.0.conv.weight"], source.stages[0].conv.weight)

    for init in ("hf-hub:chexlab/simple", f"hf-hub:chexlab/simple@{commit}"):
        model = create_classifier("chexlab_simple_cnn", 3, init=init, label_names=LABELS).eval()
        images = _images(2)
        assert torch.equal(model(images), source(images))


def test_hf_hub_sources_that_cannot_be_used(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not in the local Hugging Face cache"):
        read_model_folder("hf-hub:chexlab/never-downloaded")

    folder = _save_chexlab_folder(create_classifier("test_resnet", 2), tmp_path / "model", ["a", "b"])
    pickled = tmp_path / "pytorch_model.bin"
    pickled.write_bytes(b"not opened")
    _fill_hub_cache("someone/pickled", {"config.json": folder / "config.json", "pytorch_model.bin": pickled})
    with pytest.raises(ModelSourceError, match="pytorch_model.bin is a pickle-based .* arbitrary code"):
        read_model_folder("hf-hub:someone/pickled")


def test_local_dir_folders_that_cannot_be_used(tmp_path: Path) -> None:
    folder = _save_chexlab_folder(create_classifier("test_resnet", 2), tmp_path / "model", ["a", "b"])
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="pickle-based"):
        read_model_folder(f"local-dir:{folder}")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ModelSourceError, match="has no model.safetensors"):
        read_model_folder(f"local-dir:{folder}")
    (folder / "config.json").unlink()
    with pytest.raises(ModelSourceError, match="has no config.json"):
        read_model_folder(f"local-dir:{folder}")


def test_model_from_folder_rebuilds_the_saved_model(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = create_classifier("test_convnext", 3, head=HEADS["mlp"]).eval()
    folder = _save_chexlab_folder(source, tmp_path / "model", LABELS)
    model = model_from_folder(*read_model_folder(f"local-dir:{folder}")).eval()
    images = _images(2)
    assert torch.equal(model(images), source(images))
    assert head_config(model) == HEADS["mlp"] and model.pretrained_cfg["label_names"] == LABELS


@pytest.mark.parametrize("arch", ["test_efficientnet", "chexlab_simple_cnn"])
def test_linear_head_models_load_in_plain_timm(tmp_path: Path, arch: str) -> None:
    source = create_classifier(arch, 3).eval()
    folder = _save_chexlab_folder(source, tmp_path / "model", LABELS)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = _images(2)
    assert torch.equal(model(images), source(images))
    assert model.pretrained_cfg["label_names"] == LABELS


# --- chexlab_simple_cnn ----------------------------------------------------------------------------------


def test_simple_cnn_is_a_timm_model() -> None:
    assert "chexlab_simple_cnn" in timm.list_models("chexlab_*")
    model = create_classifier("chexlab_simple_cnn", 1, drop_rate=0.5).eval()
    assert isinstance(model, SimpleCNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert (len(convs), len(pools), len(linears)) == (6, 6, 2)

    images = _images(2, 224)
    features = model.forward_features(images)
    assert features.shape == (2, model.num_features, 7, 7)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model(images).shape == (2, 1)
    assert model(_images(2, 96)).shape == (2, 1)  # global pooling: any input size
    assert [info["reduction"] for info in model.feature_info] == [1, 2, 4, 8, 16, 32]

    config = model_data_config(model)
    assert config["input_size"] == (3, 224, 224) and config["mean"] == (0.5, 0.5, 0.5)
    assert config["interpolation"] == "bilinear"
    assert model.get_classifier() is model.fc
    model.reset_classifier(4)
    assert model(images).shape == (2, 4)


def test_simple_cnn_feature_extraction() -> None:
    backbone = timm.create_model("chexlab_simple_cnn", features_only=True, out_indices=(3, 5))
    maps = backbone(_images(1, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 8, 8), (128, 2, 2)]


# --- Grad-CAM target layer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("test_resnet", lambda m: m.layer4),
        ("test_efficientnet", lambda m: m.blocks[-1]),
        ("densenet121", lambda m: m.features.norm5),
        ("chexlab_simple_cnn", lambda m: m.stages[5]),
    ],
)
def test_cam_target_layer_gives_a_working_grad_cam(arch: str, expected) -> None:
    torch.manual_seed(6)
    model = create_classifier(arch, 2, head=HEADS["mlp"]).eval()
    layer = cam_target_layer(model)
    assert layer is expected(model)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=_images(1, 96), targets=[ClassifierOutputTarget(1)])
        (activations,) = cam.activations_and_grads.activations
        (gradients,) = cam.activations_and_grads.gradients
    # the hooks saw the last feature map and a real gradient reached it (with random weights the map itself
    # may be all zero after Grad-CAM's ReLU, so its values are not asserted)
    assert activations.shape == (1, model.feature_info[-1]["num_chs"], 3, 3) == gradients.shape
    assert gradients.abs().sum() > 0
    assert heat.shape == (1, 96, 96) and ((heat >= 0) & (heat <= 1)).all()


def test_cam_target_layer_without_feature_info_takes_the_last_spatial_module() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip
    assert cam_target_layer(model) is model[2]  # not the pooling's (N, C, 1, 1)
    with pytest.raises(ValueError, match="no spatial activation map"):
        cam_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 2)))
