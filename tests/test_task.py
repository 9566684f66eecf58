"""The Task type: output counts, probabilities, names, decisions and the binary explanation convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.errors import ChexlabError
from trainer.task import Task, TaskError


def test_parse_accepts_names_and_tasks_and_rejects_others() -> None:
    assert Task.parse("binary") is Task.BINARY
    assert Task.parse(Task.MULTILABEL) is Task.MULTILABEL
    with pytest.raises(TaskError, match="unknown task 'multi-class'; valid: binary, multiclass, multilabel"):
        Task.parse("multi-class")
    assert issubclass(TaskError, ChexlabError) and issubclass(TaskError, ValueError)


def test_values_are_the_config_names() -> None:
    assert [t.value for t in Task] == ["binary", "multiclass", "multilabel"]
    assert Task.BINARY == "binary"  # a StrEnum: written to config.json as its name


@pytest.mark.parametrize(
    ("task", "labels", "outputs", "thresholds"),
    [
        (Task.BINARY, ["abnormal"], 1, 1),
        (Task.MULTICLASS, ["a", "b", "c"], 3, 0),
        (Task.MULTILABEL, ["a", "b", "c"], 3, 3),
    ],
)
def test_output_and_threshold_counts(task: Task, labels: list[str], outputs: int, thresholds: int) -> None:
    assert task.num_outputs(len(labels)) == outputs
    assert task.num_thresholds(len(labels)) == thresholds
    task.check_outputs(labels, outputs, [0.5] * thresholds)
    with pytest.raises(TaskError, match="outputs"):
        task.check_outputs(labels, outputs + 1, [0.5] * thresholds)
    with pytest.raises(TaskError, match="thresholds"):
        task.check_outputs(labels, outputs, [0.5] * (thresholds + 1))


def test_check_outputs_rejects_two_binary_labels_and_nan_thresholds() -> None:
    with pytest.raises(TaskError, match="one label name"):
        Task.BINARY.check_outputs(["a", "b"], 1, [0.5])
    with pytest.raises(TaskError, match="finite"):
        Task.MULTILABEL.check_outputs(["a"], 1, [float("nan")])


def test_probabilities_per_task() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert torch.allclose(Task.MULTICLASS.probabilities(logits).sum(-1), torch.ones(2))
    assert torch.allclose(Task.MULTILABEL.probabilities(logits), logits.sigmoid())
    binary = Task.BINARY.probabilities(torch.tensor([[0.0], [2.0]]))
    assert binary.shape == (2,)
    assert torch.allclose(binary, torch.tensor([0.0, 2.0]).sigmoid())
    assert Task.BINARY.target_dtype == torch.float32 and Task.MULTICLASS.target_dtype == torch.long


def test_names_probabilities_and_decisions() -> None:
    assert Task.BINARY.output_names(["abnormal"], "normal") == ["abnormal", "normal"]
    assert Task.BINARY.output_names(["TB"], None) == ["TB", "not TB"]
    assert Task.BINARY.class_probabilities(np.array([0.8]), ["abnormal"], "normal") == pytest.approx(
        {"abnormal": 0.8, "normal": 0.2}
    )
    assert Task.BINARY.decide(np.array([0.8]), ["abnormal"], [0.83], "normal") == ["normal"]
    assert Task.BINARY.decide(np.array([0.83]), ["abnormal"], [0.83], "normal") == ["abnormal"]
    assert Task.MULTICLASS.decide(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], [], None) == ["b"]
    assert Task.MULTILABEL.decide(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], [0.1, 0.6, 0.3], None) == [
        "a",
        "c",
    ]


def test_binary_explanation_convention_round_trips() -> None:
    names = Task.BINARY.output_names(["abnormal"], "normal")
    assert Task.BINARY.class_index(names, "abnormal") == 1
    assert Task.BINARY.class_index(names, "normal") == 0
    assert [Task.BINARY.class_name(names, i) for i in (1, 0)] == ["abnormal", "normal"]
    logit = torch.tensor([1.5])
    assert Task.BINARY.class_score(logit, 1) == 1.5 and Task.BINARY.class_score(logit, 0) == -1.5
    assert Task.BINARY.default_class_index(logit) == 1
    assert Task.BINARY.default_class_index(-logit) == 0
    assert Task.BINARY.num_explainable(1) == 2
    with pytest.raises(TaskError, match="unknown class 'lion'"):
        Task.BINARY.class_index(names, "lion")


def test_other_tasks_explain_output_i_by_index_i() -> None:
    names = ["a", "b", "c"]
    for task in (Task.MULTICLASS, Task.MULTILABEL):
        assert [task.class_index(names, n) for n in names] == [0, 1, 2]
        assert task.class_name(names, 2) == "c"
        logits = torch.tensor([0.1, 3.0, -1.0])
        assert task.default_class_index(logits) == 1
        assert task.class_score(logits, 2) == -1.0
        assert task.num_explainable(3) == 3


def test_each_task_kind_has_exactly_one_flag() -> None:
    flags = {task: (task.single_logit, task.exclusive, task.multi_label) for task in Task}
    assert flags == {
        Task.BINARY: (True, False, False),
        Task.MULTICLASS: (False, True, False),
        Task.MULTILABEL: (False, False, True),
    }


def test_target_arrays_have_each_tasks_dtype_and_shape() -> None:
    binary = Task.BINARY.target_array([0, 1, 1], 3, ["abnormal"])
    assert binary.dtype == np.float32 and binary.shape == (3,)
    classes = Task.MULTICLASS.target_array([2.0, 0.0], 2, ["a", "b", "c"])
    assert classes.dtype == np.int64 and classes.tolist() == [2, 0]
    findings = Task.MULTILABEL.target_array([[0, np.nan], [1, 0]], 2, ["a", "b"])
    assert findings.dtype == np.float32 and np.isnan(findings[0, 1])
    with pytest.raises(TaskError, match=r"multilabel targets must have shape \(3, 2\), got \(2, 2\)"):
        Task.MULTILABEL.target_array([[0, 1], [1, 0]], 3, ["a", "b"])
    with pytest.raises(TaskError, match="one label name"):
        Task.BINARY.target_array([0, 1], 2, ["normal", "abnormal"])


def test_prediction_arrays_bring_every_task_to_one_layout() -> None:
    y, p = Task.BINARY.prediction_arrays([0, 1], [[0.2], [0.9]])
    assert y.shape == (2, 1) and p.shape == (2, 1)
    y, p = Task.MULTICLASS.prediction_arrays([2, 0], [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    assert y.dtype == np.int64 and Task.MULTICLASS.indicators(y, 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    y, _ = Task.MULTILABEL.prediction_arrays([[0, np.nan]], [[0.3, 0.4]])
    assert Task.MULTILABEL.indicators(y, 2) is y
    with pytest.raises(TaskError, match="binary targets must be 0 or 1"):
        Task.BINARY.prediction_arrays([0, np.nan], [0.1, 0.2])
    with pytest.raises(TaskError, match=r"class indices in 0\.\.1"):
        Task.MULTICLASS.prediction_arrays([0, 2], [[0.5, 0.5], [0.5, 0.5]])


def test_losses_follow_the_task_and_its_weights() -> None:
    binary = Task.BINARY.loss(np.array([0.0, 0.0, 0.0, 1.0]), 1, class_weights=False, pos_weight=True)
    assert float(binary.pos_weight) == pytest.approx(3.0)  # three negatives per positive
    logits, targets = torch.tensor([[0.3], [-1.0]]), torch.tensor([1.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], targets, pos_weight=torch.tensor(3.0)
    )
    assert torch.allclose(binary(logits, targets), expected)

    multiclass = Task.MULTICLASS.loss(np.array([0, 0, 0, 1]), 3, class_weights=True, pos_weight=False)
    assert isinstance(multiclass, torch.nn.CrossEntropyLoss)
    # inverse frequency: 4 / (3 x count), an absent class counts as one
    assert multiclass.weight.tolist() == pytest.approx([4 / 9, 4 / 3, 4 / 3])

    multilabel = Task.MULTILABEL.loss(np.zeros((2, 2)), 2, class_weights=False, pos_weight=False)
    unknown = torch.tensor([[np.nan, 1.0], [0.0, np.nan]])
    value = multilabel(torch.zeros(2, 2), unknown)
    assert torch.isfinite(value) and value == pytest.approx(np.log(2))  # NaN targets are masked


def test_logits_from_probabilities_invert_probabilities() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    for task, x in ((Task.MULTILABEL, logits), (Task.BINARY, logits[:, :1])):
        assert torch.allclose(task.logits_from_probabilities(task.probabilities(x)), x, atol=1e-5)
    recovered = Task.MULTICLASS.logits_from_probabilities(Task.MULTICLASS.probabilities(logits))
    assert torch.allclose(recovered.softmax(-1), logits.softmax(-1), atol=1e-6)  # up to a constant per row
