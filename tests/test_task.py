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
