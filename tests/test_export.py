"""trainer.export: the timm Hub layout, interop with timm (local-dir and a real offline Hub cache), fp16,
revisions, and the refusals (pickle-only, not a chexlab model, missing, offline)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx2
import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file
from timm.models import save_for_hf

import trainer.model_source
from tests.synthetic import assert_timm_keeps_the_whole_film
from trainer.export import ModelInfo, load_model, save_pretrained
from trainer.model_source import ModelLoadError
from trainer.modeling import HeadConfig, create_classifier
from trainer.preprocess import Pipeline

ARCH = "test_efficientnet"
SIZE = 48
PIPELINE = [{"op": "clahe", "clip_limit": 3.0}, {"op": "crop_lungs"}]
LABELS = {"binary": ["pneumonia"], "multiclass": ["normal", "bacterial", "viral"], "multilabel": ["a", "b"]}
THRESHOLDS = {"binary": [0.37], "multiclass": [], "multilabel": [0.2, 0.6]}


def _model(task: str = "binary", head: HeadConfig | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    num_classes = 1 if task == "binary" else len(LABELS[task])
    model = create_classifier(ARCH, num_classes, head=head)
    # Random BatchNorm statistics, so that a head or stat lost on the way would change the logits.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _save(model: torch.nn.Module, folder: Path, task: str = "binary", **kwargs) -> Path:
    return save_pretrained(
        model,
        folder,
        task=task,
        label_names=LABELS[task],
        negative_name="normal" if task == "binary" else None,
        pipeline=Pipeline.from_list(PIPELINE),
        thresholds=THRESHOLDS[task],
        input_size=SIZE,
        **kwargs,
    )


def _inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model.eval()(_inputs())


def _fill_hub_cache(repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay `folder` out as huggingface_hub's cache does: blobs/, snapshots/<commit>/<file> links, refs/."""
    repo = Path(hf_constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


def test_layout_and_config(tmp_path: Path) -> None:
    data_summary = {
        "name": "kermany",
        "root": "/home/someone/data",
        "n_images": {"train": 10, "val": 2, "test": 3},
    }
    metrics = {"test": {"auc": {"value": 0.9, "ci": [0.8, 0.95]}}}
    folder = _save(_model(), tmp_path / "model", data_summary=data_summary, metrics_summary=metrics)

    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}  # readable by a server's user
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ARCH
    assert config["num_classes"] == 1
    assert config["label_names"] == ["pneumonia"]
    pretrained = config["pretrained_cfg"]
    assert pretrained["input_size"] == [3, SIZE, SIZE]
    assert pretrained["crop_pct"] == 1.0 and pretrained["crop_mode"] == "border"
    assert {"mean", "std", "interpolation"} <= set(pretrained)
    block = config["chexlab"]
    assert block["task"] == "binary"
    assert block["negative_name"] == "normal"
    assert block["thresholds"] == [0.37]
    assert block["head"]["type"] == "linear"
    assert block["preprocessing"] == Pipeline.from_list(PIPELINE).to_list()
    assert block["metrics"] == metrics
    assert block["training_data"]["n_images"] == data_summary["n_images"]
    assert "/home/someone" not in (folder / "config.json").read_text()  # no local paths in a publishable file
    assert block["chexlab_version"]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_local_dir_timm_and_chexlab_agree(tmp_path: Path, task: str) -> None:
    model = _model(task)
    folder = _save(model, tmp_path / "model", task=task)

    loaded, info = load_model(f"local-dir:{folder}")
    by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True)

    expected = _logits(model)
    torch.testing.assert_close(_logits(loaded), expected)
    torch.testing.assert_close(_logits(by_timm), expected)
    assert isinstance(info, ModelInfo)
    assert (info.arch, info.task, info.label_names, info.thresholds) == (
        ARCH,
        task,
        LABELS[task],
        THRESHOLDS[task],
    )
    assert info.negative_name == ("normal" if task == "binary" else None)
    assert info.pipeline == Pipeline.from_list(PIPELINE)
    assert info.data_config["input_size"] == (3, SIZE, SIZE)
    assert timm.data.resolve_model_data_config(by_timm)["input_size"] == (3, SIZE, SIZE)
    assert not loaded.training


def test_plain_timm_keeps_the_whole_film(tmp_path: Path) -> None:
    folder = _save(_model(), tmp_path / "model")
    assert_timm_keeps_the_whole_film(timm.create_model(f"local-dir:{folder}", pretrained=True))


def test_plain_folder_and_run_folder_paths(tmp_path: Path) -> None:
    model = _model()
    _save(model, tmp_path / "run" / "model")
    for source in (tmp_path / "run" / "model", str(tmp_path / "run")):
        loaded, _ = load_model(source)
        torch.testing.assert_close(_logits(loaded), _logits(model))


def test_hf_hub_offline_cache_timm_and_chexlab_agree(tmp_path: Path, offline_hub: Path) -> None:
    model = _model("multilabel")
    folder = _save(model, tmp_path / "model", task="multilabel")
    # The conftest fixture points huggingface_hub at a private cache; fill that one, not ~/.cache.
    assert Path(hf_constants.HF_HUB_CACHE) == offline_hub / "hub"
    _fill_hub_cache("chexlab-test/tiny", folder, commit="1" * 40)

    loaded, info = load_model("hf-hub:chexlab-test/tiny")
    by_timm = timm.create_model("hf-hub:chexlab-test/tiny", pretrained=True)

    expected = _logits(model)
    torch.testing.assert_close(_logits(loaded), expected)
    torch.testing.assert_close(_logits(by_timm), expected)
    assert info.label_names == LABELS["multilabel"]


def test_revisions(tmp_path: Path) -> None:
    first, second = _model(seed=1), _model(seed=2)
    commit_a, commit_b = "a" * 40, "b" * 40
    _fill_hub_cache("chexlab-test/rev", _save(first, tmp_path / "a"), commit_a, refs=("main",))
    _fill_hub_cache("chexlab-test/rev", _save(second, tmp_path / "b"), commit_b, refs=("v2",))

    torch.testing.assert_close(_logits(load_model("hf-hub:chexlab-test/rev")[0]), _logits(first))
    torch.testing.assert_close(
        _logits(load_model("hf-hub:chexlab-test/rev", revision="v2")[0]), _logits(second)
    )
    torch.testing.assert_close(_logits(load_model(f"hf-hub:chexlab-test/rev@{commit_b}")[0]), _logits(second))
    by_timm = timm.create_model("hf-hub:chexlab-test/rev@v2", pretrained=True)
    torch.testing.assert_close(_logits(by_timm), _logits(second))
    with pytest.raises(ModelLoadError, match="revision 'v3'|not in the local Hugging Face cache"):
        load_model("hf-hub:chexlab-test/rev", revision="v3")


@pytest.mark.parametrize(
    "head",
    [HeadConfig(type="mlp", widths=[16, 8], dropout=0.1), HeadConfig(type="dense_bn")],
    ids=["mlp", "dense_bn"],
)
def test_custom_heads_need_chexlab(tmp_path: Path, head: HeadConfig) -> None:
    model = _model("multilabel", head=head)
    folder = _save(model, tmp_path / "model", task="multilabel", head=head)

    loaded, info = load_model(folder)
    torch.testing.assert_close(_logits(loaded), _logits(model))
    assert info.head == head
    # timm alone rebuilds a linear classifier, which the saved head's weights do not fit.
    with pytest.raises(RuntimeError, match="classifier"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_fp16_storage(tmp_path: Path) -> None:
    model = _model("multiclass")
    full = _save(model, tmp_path / "fp32", task="multiclass")
    half = _save(model, tmp_path / "fp16", task="multiclass", dtype=torch.float16)

    weights = load_file(half / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert weights["bn1.num_batches_tracked"].dtype == torch.int64
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    assert json.loads((half / "config.json").read_text())["chexlab"]["weights_dtype"] == "float16"

    loaded, _ = load_model(half)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(
        _logits(timm.create_model(f"local-dir:{half}", pretrained=True)), _logits(loaded)
    )


def test_fp16_overflow_refused(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.get_classifier().weight[0, 0] = 1e6
    with pytest.raises(ValueError, match="float16 range"):
        _save(model, tmp_path / "model", dtype=torch.float16)


def test_pickle_only_refused(tmp_path: Path) -> None:
    folder = _save(_model(), tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    with pytest.raises(ModelLoadError, match="arbitrary code") as local:
        load_model(folder)
    assert "save_file" in str(local.value)  # says how to convert

    _fill_hub_cache("chexlab-test/pickled", folder, commit="c" * 40)
    with pytest.raises(ModelLoadError, match="arbitrary code"):
        load_model("hf-hub:chexlab-test/pickled")


def test_plain_timm_model_refused(tmp_path: Path) -> None:
    save_for_hf(timm.create_model(ARCH, num_classes=5), tmp_path / "imagenet", safe_serialization=True)
    with pytest.raises(ModelLoadError, match="without chexlab's metadata"):
        load_model(tmp_path / "imagenet")


def test_missing_and_offline_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(f"local-dir:{tmp_path / 'empty'}")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("hf-hub:chexlab-test/never-downloaded")
    with pytest.raises(ModelLoadError, match="applies to hf-hub"):
        load_model(f"local-dir:{tmp_path / 'empty'}", revision="main")
    assert issubclass(ModelLoadError, ValueError)


def _http_error(kind: type[HfHubHTTPError], status: int) -> HfHubHTTPError:
    request = httpx2.Request("GET", "https://huggingface.co/org/name/resolve/main/config.json")
    return kind(f"{status} error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (_http_error(RepositoryNotFoundError, 404), "no Hub repository org/name.*hf auth login"),
        (_http_error(RevisionNotFoundError, 404), "no revision 'v9'"),
        (EntryNotFoundError("config.json not found"), "has no config.json"),
        (_http_error(HfHubHTTPError, 503), "cannot fetch config.json"),
    ],
    ids=["repository", "revision", "entry", "http"],
)
def test_hub_errors_become_model_load_errors(
    monkeypatch: pytest.MonkeyPatch, error: Exception, message: str
) -> None:
    def unavailable(*args: object, **kwargs: object) -> str:
        raise error

    monkeypatch.setattr(trainer.model_source, "hf_hub_download", unavailable)
    with pytest.raises(ModelLoadError, match=message):
        load_model("hf-hub:org/name", revision="v9")


def test_invalid_chexlab_block(tmp_path: Path) -> None:
    folder = _save(_model(), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["chexlab"]["preprocessing"] = [{"op": "clahee"}]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="clahee"):
        load_model(folder)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_names": ["a", "b"]}, "one label name"),
        ({"thresholds": [0.5, 0.5]}, "1 finite thresholds"),
        ({"thresholds": [float("nan")]}, "finite thresholds"),
        ({"head": HeadConfig(type="dense_bn")}, "does not match"),
        ({"task": "regression"}, "unknown task"),
    ],
)
def test_inconsistent_arguments_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"task": "binary", "label_names": ["pneumonia"], "pipeline": [], "thresholds": [0.5]} | kwargs
    with pytest.raises(ValueError, match=message):
        save_pretrained(_model(), tmp_path / "model", **arguments)
    assert not (tmp_path / "model").exists()
