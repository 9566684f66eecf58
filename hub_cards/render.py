"""Render a model card (README.md) from a chexlab run folder.

The card is one Jinja template (`model_card.md.j2`) filled from plain data only: the run folder's
`config.yaml` (with its `card:` section, see `CardInfo`), `run.json`, `metrics.json` and, when present,
`model/config.json`. metrics.json holds "val" and "test" (`trainer.metrics.evaluate_predictions`) and, for
runs that have them, "calibration" (`trainer.calibration.Calibration.to_dict()`, its "metrics" per split
{"before", "after", "ece_chance_95"}), "ood" (`trainer.ood.FeatureStatistics.config_entry()` plus
"test_flagged", the share of test images the gate flags, and "n_test") and "subgroups"
(`trainer.subgroups`); a card leaves out the sections of keys a run lacks. Nothing here imports torch or the
trainer beyond `trainer.task` (which needs neither), so a card can be rendered (and re-rendered before a
push) anywhere. The YAML front matter is built with huggingface_hub's `ModelCardData` and `EvalResult`, so
the Hub reads the licence, tags and every headline metric of both evaluation splits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from trainer.errors import ChexlabError
from trainer.task import Task

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("model_card.md.j2")
PLOTS = ("roc.png", "confusion.png", "training_curves.png", "reliability.png")
BASE_TAGS = ("chest-x-ray", "medical-imaging", "radiology", "chexlab")
# (metrics.json key, model-index metric type, display name)
HEADLINE_METRICS = (
    ("auc", "roc_auc", "ROC AUC"),
    ("accuracy", "accuracy", "Accuracy"),
    ("sensitivity", "recall", "Sensitivity"),
    ("specificity", "specificity", "Specificity"),
    ("ppv", "precision", "PPV"),
    ("npv", "npv", "NPV"),
    ("f1", "f1", "F1"),
)
# The Hub's metric types name sensitivity and PPV differently: say both in the results table.
TABLE_NAMES = {"sensitivity": "Sensitivity (recall)", "ppv": "PPV (precision)"}
SPLITS = (("test", "test", "Test"), ("val", "validation", "Validation"))  # (metrics.json, Hub, display)
# (calibration metric key, model-index metric type, display name): the calibrated test split's in the index
CALIBRATION_METRICS = (
    ("ece", "ece", "ECE (15 bins)"),
    ("brier", "brier", "Brier score"),
    ("nll", "nll", "NLL"),
)
CALIBRATION_WORDS = {
    "temperature": "temperature scaling: the logits are divided by one fitted temperature T",
    "temperature+offset": (
        "temperature scaling with an offset (Platt scaling): each sigmoid output's logit z becomes z / T + b"
    ),
}
SUBGROUP_TITLES = {"sex": "Sex", "patientsex": "Sex", "gender": "Sex", "view": "View", "viewposition": "View"}
# Below this many test images, the card says plainly that the intervals are wide.
SMALL_TEST_SET = 1000
# Anything shaped like a Hugging Face access token must never reach a card.
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")


class CardError(ChexlabError, ValueError):
    """A run folder that lacks what a model card needs, or a card section with unknown keys."""


@dataclass
class CardInfo:
    """What a run's model card says beyond what the run itself measured: the `card:` section of its config.

    Field names are the YAML keys. Empty values are left out of the card.
    """

    title: str | None = None  # card heading; default: the repo name, else the run name
    license: str | None = None  # the model's licence, a Hub licence id (e.g. "apache-2.0", "cc-by-4.0")
    datasets: list[str] = field(default_factory=list)  # Hugging Face dataset ids, for the Hub's links
    dataset_name: str | None = None  # human-readable dataset name; default: the run's data.name
    data_description: str = ""  # where the images come from: population, sites, how labels were made
    data_license: str = ""  # the training data's licence(s) and terms
    data_citation: str = ""  # how to cite the data (BibTeX or plain text)
    base_model: str | None = None  # Hub id of the initial weights (e.g. "timm/tf_efficientnet_lite0.in1k")
    initial_weights: str = ""  # credit for the initial weights (who made them, their licence)
    limitations: list[str] = field(default_factory=list)  # extra bullet points for "Limitations"
    tags: list[str] = field(default_factory=list)  # extra Hub tags
    citation: str = ""  # extra citation (e.g. the paper whose recipe this run follows), BibTeX or text

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CardInfo:
        """Build from the YAML mapping, refusing unknown keys (a typo would silently drop a licence)."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CardError(
                f"unknown key(s) in the card section: {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        for key in ("datasets", "limitations", "tags"):
            if values.get(key) is None:
                values.pop(key, None)
            elif isinstance(values[key], str):
                values[key] = [values[key]]
        return cls(**values)


def render_card(run_dir: str | Path, *, repo_id: str | None = None) -> ModelCard:
    """Render the model card (README.md text) of a run folder.

    Args:
        run_dir: a folder written by `python -m trainer fit` (config.yaml, run.json, metrics.json, plots/).
        repo_id: the Hub repo the model is (or will be) pushed to, for the usage examples and the title;
            None for a local card, which then refers to the model folder by path.

    Returns:
        The card, parsed back as the Hub parses it: `.data` is the YAML front matter (licence, tags,
        datasets, base_model, model-index), `.content` the whole README.md text.

    Raises:
        CardError: a required file or field is missing, or the card section has unknown keys.
    """
    run_dir = Path(run_dir)
    context = _context(run_dir, repo_id)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    body = environment.get_template(TEMPLATE.name).render(**context)
    text = f"---\n{context['card_data'].to_yaml()}\n---\n\n{body.strip()}\n"
    if TOKEN_PATTERN.search(text):
        raise CardError(
            "the rendered card contains a string shaped like a Hugging Face token; remove it from the config"
        )
    # Parsed back as the Hub would: a malformed front matter fails here, not after the upload.
    return ModelCard(text)


def write_card(run_dir: str | Path, model_dir: str | Path, *, repo_id: str | None = None) -> Path:
    """Write MODEL_DIR/README.md from the run folder, and copy the run's plots to MODEL_DIR/plots/.

    Returns:
        The path of the written README.md.
    """
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    card = render_card(run_dir, repo_id=repo_id)
    (model_dir / "plots").mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        source = run_dir / "plots" / name
        if source.is_file():
            shutil.copyfile(source, model_dir / "plots" / name)
    readme = model_dir / "README.md"
    readme.write_text(card.content, encoding="utf-8")
    logger.info("wrote the model card %s", readme)
    return readme


# ---------------------------------------------------------------------------------------------------------
# Reading the run folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(
            f"{path} is missing: render cards from a finished run folder (python -m trainer fit)"
        ) from None
    except json.JSONDecodeError as err:
        raise CardError(
            f"{path} is not valid JSON ({err}); the run may have been interrupted: run it again"
        ) from None


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise CardError(
            f"{path} is missing: render cards from a finished run folder (python -m trainer fit)"
        ) from None
    except yaml.YAMLError as err:
        raise CardError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise CardError(f"{path} must hold a mapping, not {type(config).__name__}")
    return config


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise CardError(f"{where} has no '{key}'; was it written by this version of chexlab?")
    return mapping[key]


# ---------------------------------------------------------------------------------------------------------
# Formatting


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _with_ci(metric: dict[str, Any] | None) -> str:
    """'0.873 (0.812–0.921)', '0.873' without an interval, 'n/a' when undefined."""
    metric = metric or {}
    value = metric.get("value")
    if value is None:
        return "n/a"
    ci = _ci(metric.get("ci"))
    return f"{_num(value)} ({ci})" if ci else _num(value)


def _plain(value: Any) -> str:
    """A config value for prose: booleans as on/off, a pair of numbers as a range, floats without noise."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        if len(value) == 2 and all(isinstance(v, int | float) for v in value):
            return f"{_plain(value[0])}–{_plain(value[1])}"
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"


# Words for the preprocessing ops of trainer.preprocess; an op not listed here is still shown, by name.
OP_WORDS = {
    "clahe": "contrast-limited adaptive histogram equalisation (CLAHE)",
    "white_balance": "robust contrast stretch (the given percent of darkest and brightest pixels saturate)",
    "equalize": "global histogram equalisation",
    "gamma": "gamma correction",
    "invert": "intensity inversion (negative image)",
    "median": "median filter",
    "crop_body": "crop to the patient's body, dropping empty borders and burnt-in labels",
    "crop_lungs": "crop to the lung fields (falling back to the body crop when the lungs are not found)",
    "resize": "resize to a square (padded to keep the aspect ratio when pad is on)",
}


def _describe_op(step: Any) -> str:
    if isinstance(step, str):
        step = {"op": step}
    step = dict(step)
    op = str(step.pop("op", "?"))
    words = OP_WORDS.get(op, f"`{op}`")
    params = ", ".join(f"{key.replace('_', ' ')} {_plain(value)}" for key, value in step.items())
    return f"{words}, {params}" if params else words


# ---------------------------------------------------------------------------------------------------------
# The template's context


def _task_words(task: Task, labels: list[str], negative: str | None) -> str:
    if task.single_logit:
        positive, negative = task.output_names(labels, negative)
        return f"binary classification: **{positive}** vs **{negative}**"
    if task.exclusive:
        return f"multi-class classification into one of {len(labels)} classes: " + ", ".join(
            f"**{name}**" for name in labels
        )
    return f"multi-label classification: an independent probability for each of {len(labels)} findings"


def _eval_results(
    metrics: dict[str, Any], dataset_type: str, dataset_name: str, task_name: str
) -> list[EvalResult]:
    found: list[tuple[str, str, str, Any]] = []  # (Hub split, metric type, name, value)
    for key, hub_split, _ in SPLITS:
        split = metrics.get(key)
        if not split:
            continue
        average = Task.parse(split["task"]).averaging
        for metric_key, metric_type, display in HEADLINE_METRICS:
            value = split["headline"].get(metric_key, {}).get("value")
            # None: undefined on this split (see the per-class notes); the Hub needs a number
            found.append(
                (hub_split, metric_type, f"{display}{f', {average}' if average else ''} ({hub_split})", value)
            )
    per_split = (metrics.get("calibration") or {}).get("metrics") or {}
    calibrated_test = (per_split.get("test") or {}).get("after") or {}
    for metric_key, metric_type, display in CALIBRATION_METRICS[:2]:
        found.append(("test", metric_type, f"{display}, calibrated (test)", calibrated_test.get(metric_key)))
    return [
        EvalResult(
            task_type="image-classification",
            task_name=task_name,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=hub_split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=round(float(value), 4),
        )
        for hub_split, metric_type, name, value in found
        if value is not None
    ]


def _headline_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for metric_key, _, display in HEADLINE_METRICS:
        row = {"name": TABLE_NAMES.get(metric_key, display)}
        for key, _, _ in SPLITS:
            split = metrics.get(key)
            row[key] = _with_ci(split["headline"].get(metric_key)) if split else "—"
        rows.append(row)
    return rows


def _per_class_rows(split: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, entry in split.get("per_class", {}).items():
        rows.append(
            {
                "name": name,
                "n_pos": str(entry.get("n_pos", "")),
                "n_neg": str(entry.get("n_neg", "")),
                "auc": _with_ci(entry.get("auc")),
                "sensitivity": _with_ci(entry.get("sensitivity")),
                "specificity": _with_ci(entry.get("specificity")),
                "ppv": _num((entry.get("ppv") or {}).get("value")),
                "npv": _num((entry.get("npv") or {}).get("value")),
                "f1": _num((entry.get("f1") or {}).get("value")),
                "threshold": _num(entry.get("threshold")) if entry.get("threshold") is not None else "argmax",
                "note": entry.get("note") or "",
            }
        )
    return rows


def _confusion_table(split: dict[str, Any]) -> dict[str, Any] | None:
    confusion = split.get("confusion_matrix") or {}
    if "matrix" not in confusion:  # multilabel: one 2x2 per finding, shown in the plot only
        return None
    return {
        "labels": confusion["labels"],
        "rows": list(zip(confusion["labels"], confusion["matrix"], strict=True)),
    }


def _operating_point(config: dict[str, Any], split: dict[str, Any]) -> str:
    task = Task.parse(split["task"])
    if task.exclusive:
        return "The predicted class is the one with the highest probability (argmax); there is no threshold."
    evaluation = config.get("eval") or {}
    method = evaluation.get("threshold", "youden")
    if method == "sensitivity":
        how = (
            f"the highest threshold that reaches a sensitivity of at least "
            f"{_plain(evaluation.get('target_sensitivity', 0.9))} on the validation split"
        )
    else:
        how = (
            "Youden's J on the validation split (the threshold that maximises sensitivity + specificity − 1)"
        )
    thresholds = split.get("thresholds") or []
    if task.single_logit and thresholds:
        return (
            f"An image is called **{split['label_names'][0]}** when its probability is at least "
            f"**{_num(thresholds[0])}**, chosen by {how}. The test numbers use this threshold unchanged."
        )
    return (
        f"Each finding is called present when its probability reaches its own threshold (per-class table), "
        f"chosen by {how}. The test numbers use these thresholds unchanged."
    )


def _calibration_context(calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's calibration section: method in words, fitted values, before/after rows per split."""
    if not calibration or calibration.get("method", "none") == "none":
        return None
    per_split = calibration.get("metrics") or {}
    rows = []
    for key, _, display in SPLITS[::-1]:  # validation first: it is what the calibration was fitted on
        entry = per_split.get(key)
        if not entry:
            continue
        before, after = entry.get("before") or {}, entry.get("after") or {}
        row = {"split": display, "n": str(after.get("n", before.get("n", "")))}
        for metric_key, _, _ in CALIBRATION_METRICS:
            row[f"{metric_key}_before"] = _num(before.get(metric_key))
            row[f"{metric_key}_after"] = _num(after.get(metric_key))
        row["ece_chance"] = _num(entry.get("ece_chance_95"))
        rows.append(row)
    temperatures = [float(t) for t in calibration.get("temperatures") or []]
    offsets = [float(b) for b in calibration.get("offsets") or []]
    test = per_split.get("test") or {}
    after_ece, chance = (test.get("after") or {}).get("ece"), test.get("ece_chance_95")
    return {
        "method": calibration.get("method"),
        "words": CALIBRATION_WORDS.get(calibration.get("method", ""), str(calibration.get("method"))),
        "fitted_on": calibration.get("fitted_on") or "validation",
        "n_images": calibration.get("n_images"),
        "temperature_values": ", ".join(f"{t:.3f}" for t in temperatures),
        "offsets": ", ".join(f"{b:+.3f}" for b in offsets),
        "several": len(temperatures) > 1,
        "rows": rows,
        "within_chance": None if after_ece is None or chance is None else after_ece <= chance,
    }


def _ood_context(ood: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's out-of-distribution section: the score, its threshold and what it flags."""
    if not ood or ood.get("threshold") is None:
        return None
    flagged = ood.get("test_flagged")
    return {
        "score": ood.get("score", "?"),
        "threshold": _num(ood.get("threshold"), 2),
        "pass_pct": f"{100 * float(ood.get('pass_rate', 0.99)):g}",
        "n_train": ood.get("n_train"),
        "n_val": ood.get("n_val"),
        "feature_dim": ood.get("feature_dim"),
        "test_flagged_pct": None if flagged is None else f"{100 * float(flagged):.1f}",
        "n_test": ood.get("n_test"),
    }


def _subgroup_title(column: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", column.lower())
    if key in SUBGROUP_TITLES:
        return SUBGROUP_TITLES[key]
    if key in ("age", "patientage", "ageyears", "ageinyears", "anchorage"):  # as trainer.subgroups bands them
        return "Age band (years)"
    return column.replace("_", " ").capitalize()


def _subgroups_context(subgroups: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One table per metadata column: per group the counts, AUC, sensitivity and specificity with CIs."""
    tables = []
    for column, groups in ((subgroups or {}).get("columns") or {}).items():
        rows = [
            {
                "group": entry.get("group", "?"),
                "n_images": str(entry.get("n_images", "")),
                "n_patients": str(entry.get("n_patients", "")),
                "auc": _with_ci(entry.get("auc")),
                "sensitivity": _with_ci(entry.get("sensitivity")),
                "specificity": _with_ci(entry.get("specificity")),
                "note": entry.get("note") or "",
            }
            for entry in groups
        ]
        tables.append({"column": column, "title": _subgroup_title(column), "rows": rows})
    return tables


def _head_words(head: Any) -> str:
    head = head if isinstance(head, dict) else {"type": head or "linear"}
    kind = head.get("type", "linear")
    if kind == "linear":
        return "linear (timm's own classifier)"
    if kind == "dense_bn":
        return "linear layer to the outputs followed by BatchNorm over them (dense_bn)"
    if kind == "mlp":
        extras = ["ReLU", *(["BatchNorm"] if head.get("batch_norm", True) else [])]
        if head.get("dropout"):
            extras.append(f"dropout {_plain(head['dropout'])}")
        widths = " → ".join(str(w) for w in head.get("widths", []))
        return f"MLP: hidden layers {widths} ({', '.join(extras)}), then a linear output layer"
    return str(kind)


def _augment_words(augment: dict[str, Any]) -> str:
    if not augment or augment.get("enabled") is False:
        return "none"
    return "; ".join(
        f"{key.replace('_', ' ')} {_plain(value)}" for key, value in augment.items() if key != "enabled"
    )


def _phases_words(phases: list[dict[str, Any]]) -> list[str]:
    words = []
    for i, phase in enumerate(phases, 1):
        frozen = "backbone frozen (head only)" if phase.get("freeze_backbone") else "all layers trained"
        epochs = phase.get("epochs")
        count = f"{epochs} epoch{'' if epochs == 1 else 's'}"
        words.append(f"phase {i}: {count} at learning rate {_plain(phase.get('lr'))}, {frozen}")
    return words


def _data_config(run_dir: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """Input size, mean and std, from the exported model's config.json when there is one."""
    pretrained = {}
    model_config = run_dir / "model" / "config.json"
    if model_config.is_file():
        pretrained = _read_json(model_config).get("pretrained_cfg", {})
    size = pretrained.get("input_size") or recipe.get("input_size")
    if isinstance(size, int):
        size = [3, size, size]
    return {
        "size": f"{size[-2]}×{size[-1]}" if size else None,
        "mean": _plain(pretrained["mean"]) if pretrained.get("mean") else None,
        "std": _plain(pretrained["std"]) if pretrained.get("std") else None,
    }


def _limitations(
    info: CardInfo, task: Task, dataset_name: str, test: dict[str, Any] | None, data: dict[str, Any]
) -> list[str]:
    confidence = f"{100 * ((test or {}).get('bootstrap') or {}).get('confidence', 0.95):g}"
    items = [
        f"**Population and site.** The model saw images from one collection ({dataset_name}) only. On "
        "other hospitals, scanners, patient groups (e.g. adults vs children, inpatients vs screening), views "
        "(PA, AP, lateral) or image processing it will perform differently, most likely worse, and the "
        "operating point will need re-calibrating on local data (`python -m trainer calibrate MODEL --data "
        "YOUR_DATA.yaml --out NEW_FOLDER` refits the calibration and thresholds on your labelled images).",
        "**Label noise.** Labels are used as distributed with the dataset (often mined from reports, not "
        "re-read by radiologists for this model). Label errors bias both the model and the numbers above.",
        "**Shortcuts.** When classes come from different sources (hospitals, age groups, publications, "
        "preprocessing), a model can recognise the source instead of the disease, and score well on a test "
        "split drawn from the same sources. High numbers on such data are not evidence of clinical skill.",
    ]
    n_test = (test or {}).get("n_images") or (data.get("n_images") or {}).get("test")
    if n_test is not None and n_test < SMALL_TEST_SET:
        patients = (test or {}).get("n_patients")
        who = f" from {patients} patients" if patients else ""
        rare = ", and per-class numbers of classes with few positives are unreliable"
        rare = "" if task.single_logit else rare
        items.append(
            f"**Small data.** The test split holds only {n_test} images{who}: the {confidence} % intervals "
            f"are wide{rare}."
        )
    if task.multi_label:
        items.append(
            "**Findings are not a diagnosis.** Each output is the probability of one radiological finding; "
            "the absence of a flagged finding does not mean a normal study."
        )
    return items + list(info.limitations)


def _context(run_dir: Path, repo_id: str | None) -> dict[str, Any]:
    config = _read_config(run_dir)
    run = _read_json(run_dir / "run.json")
    metrics = _read_json(run_dir / "metrics.json")
    try:
        info = CardInfo.from_dict(config.get("card"))
    except TypeError as err:
        raise CardError(f"the card section of {run_dir / 'config.yaml'} is malformed: {err}") from None
    test = metrics.get("test")
    reference = test or metrics.get("val")
    if not reference:
        raise CardError(f"{run_dir / 'metrics.json'} has neither a 'test' nor a 'val' evaluation")
    recipe = _require(run, "recipe", "run.json")
    data = run.get("dataset") or {}
    task = Task.parse(reference["task"])
    labels = list(reference["label_names"])
    negative = reference.get("negative_name")

    dataset_name = (
        info.dataset_name or data.get("name") or (config.get("data") or {}).get("name") or "unnamed dataset"
    )
    dataset_type = info.datasets[0] if info.datasets else _slug(dataset_name)
    title = (
        info.title or (repo_id.split("/")[-1] if repo_id else None) or config.get("name") or "chexlab model"
    )
    task_name = f"Chest X-ray {task} classification"
    init = recipe.get("init") or ""
    base_model = info.base_model or (init.removeprefix("hf-hub:") if init.startswith("hf-hub:") else None)
    missing = [key for key in ("license", "data_license") if not getattr(info, key)]
    if missing:
        logger.warning("the card section sets no %s; the card will say so", " or ".join(missing))

    card_data = ModelCardData(
        license=info.license,
        library_name="timm",
        pipeline_tag="image-classification",
        tags=[*BASE_TAGS, task.value, *info.tags],
        datasets=info.datasets or None,
        base_model=base_model,
        metrics=[metric_type for _, metric_type, _ in HEADLINE_METRICS],
        model_name=title,
        eval_results=_eval_results(metrics, dataset_type, dataset_name, task_name) or None,
    )

    head = recipe.get("head")
    head_type = head.get("type", "linear") if isinstance(head, dict) else (head or "linear")
    arch = recipe.get("arch", "?")
    pipeline = recipe.get("pipeline") if recipe.get("pipeline") is not None else config.get("preprocess", [])
    splits_present = [key for key in ("train", "val", "test") if key in (data.get("n_images") or {})]
    label_counts = data.get("label_counts") or {}
    timing = run.get("timing") or {}
    bootstrap = (test or {}).get("bootstrap") or {}
    headline_rows = _headline_rows(metrics)
    return {
        "card_data": card_data,
        "title": title,
        "info": info,
        "task": task,
        "task_words": _task_words(task, labels, negative),
        "labels": labels,
        "negative": negative,
        "averaging": task.averaging,
        "source": f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder",
        "repo_id": repo_id,
        "arch": arch,
        # chexlab's own architectures are registered with timm when chexlab's trainer is imported
        "needs_trainer_import": arch.startswith("chexlab_"),
        "init": init,
        "head_words": _head_words(head),
        "timm_loadable": head_type == "linear",
        "phases": _phases_words(recipe.get("phases") or []),
        "batch_size": recipe.get("batch_size"),
        "optimizer": recipe.get("optimizer"),
        "schedule": recipe.get("schedule"),
        "augment_words": _augment_words(recipe.get("augment") or {}),
        "epochs_run": run.get("epochs_run"),
        "best_epoch": run.get("best_epoch"),
        "device": timing.get("device"),
        "seconds_per_epoch": _num(timing.get("seconds_per_epoch"), 1)
        if timing.get("seconds_per_epoch")
        else None,
        "images_per_s": _num(timing.get("images_per_s"), 1) if timing.get("images_per_s") else None,
        "chexlab_version": run.get("chexlab_version", "?"),
        "dataset_name": dataset_name,
        "splits": splits_present,
        "n_images": data.get("n_images") or {},
        "n_patients": data.get("n_patients") or {},
        "count_labels": sorted({label for counts in label_counts.values() for label in counts}, key=str),
        "label_counts": label_counts,
        "pipeline_words": [_describe_op(step) for step in pipeline],
        "pipeline_json": json.dumps(pipeline, indent=2),
        "data_config": _data_config(run_dir, recipe),
        "headline_rows": headline_rows,
        "has_na": any("n/a" in value for row in headline_rows for value in row.values()),
        "has_val": bool(metrics.get("val")),
        "test": test,
        "test_n": (test or {}).get("n_images"),
        "test_patients": (test or {}).get("n_patients"),
        "confidence_pct": f"{100 * bootstrap.get('confidence', 0.95):g}",
        "bootstrap_n": bootstrap.get("n", "?"),
        "bootstrap_unit": bootstrap.get("unit", "patient"),
        "per_class_rows": _per_class_rows(test) if test and not task.single_logit else [],
        "confusion": _confusion_table(test) if test else None,
        "operating_point": _operating_point(config, reference),
        "plots": [name for name in PLOTS if (run_dir / "plots" / name).is_file()],
        "calibration": _calibration_context(metrics.get("calibration")),
        "ood": _ood_context(metrics.get("ood")),
        "subgroups": _subgroups_context(metrics.get("subgroups")),
        "subgroup_min_images": (metrics.get("subgroups") or {}).get("min_images"),
        "limitations": _limitations(info, task, dataset_name, test, data),
    }
