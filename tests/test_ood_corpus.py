"""bench/ood_corpus.py: the non-chest corpus is deterministic, split by source, free of chest radiographs."""

from __future__ import annotations

import numpy as np

from bench.ood_corpus import Item, corpus, distinct, synthetic


def test_synthetic_pictures_are_deterministic_and_named_once() -> None:
    first, again = synthetic(seed=0), synthetic(seed=0)
    assert [i.data for i in first] == [i.data for i in again]
    assert len({i.name for i in first}) == len(first)
    assert synthetic(seed=1)[0].data != first[0].data


def test_the_held_out_part_is_fixed_by_source_and_holds_no_chest_dicom() -> None:
    items = corpus()
    held = {i.name.split("/")[0] for i in items if i.held_out}
    tuning = {i.name.split("/")[0] for i in items if not i.held_out}
    assert {"sklearn", "streamlit"} <= held and {"gradio", "matplotlib"} <= tuning
    assert all(not i.name.startswith("dicom/RG1_") for i in items)  # pydicom-data's chest CR
    named_in_issue = [i for i in items if i.name.startswith(("dicom/MR2_", "dicom/RG3_"))]
    assert named_in_issue and not any(i.held_out for i in named_in_issue)
    assert {i.group for i in items if i.name.startswith("synthetic/")} >= {"noise", "text", "screenshot"}


def test_distinct_keeps_one_of_each_re_encoded_dicom() -> None:
    picture = np.random.default_rng(0).random((64, 48))
    other = np.random.default_rng(1).random((64, 48))
    items = [
        Item("dicom/a_UNCR.dcm", "MR", False, data=b"a"),
        Item("dicom/a_J2KI.dcm", "MR", False, data=b"b"),
        Item("dicom/b.dcm", "MR", True, data=b"c"),
        Item("synthetic/x.png", "noise", False, data=b"d"),
    ]
    pixels = {"a": picture, "b": 0.5 * picture + 0.2, "c": other, "d": picture}
    kept = distinct(items, lambda item: pixels[(item.data or b"").decode()])
    # The second is the first under another window; the synthetic item is never collapsed.
    assert [i.name for i in kept] == ["dicom/a_UNCR.dcm", "dicom/b.dcm", "synthetic/x.png"]
