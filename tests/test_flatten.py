"""One flatten, three callers: each keeps the output it had before they shared it (issue 17).

- `manifest.differences` (the resume checks, `image_classifier_reproduce`) keeps an empty dict as a value,
  so that `{}` -> `{"b": 1}` is a difference, and keeps keys exactly as they are;
- MLflow's tags and metrics and `runs show` list leaves only: an empty dict vanishes, and trailing dots
  of a key are dropped (the form they always had).
"""

from hypothesis import given
from hypothesis import strategies as st

from image_classifier.manifest import differences
from image_classifier.tracking.mlflow_logger import epoch_metrics, run_tags

ODD = {"empty": {}, "nested": {"x": 1, "deeper": {}}, "dotted.": {"y.": 2}, "": 3}


def test_differences_keep_empty_dicts_and_keys_as_they_are():
    assert differences({"versions": {}}, {"versions": {"torch": "2"}}) == [
        "versions: {} -> None",
        "versions.torch: None -> '2'",
    ]
    assert differences({"versions": {}}, {"versions": {}}) == []
    assert differences({"git": {"a": {"b.": 1}}}, {"git": {"a": {"b": 1}}}) == [
        "git.a.b: None -> 1",
        "git.a.b.: 1 -> None",
    ]
    assert differences({"code": ODD}, {"code": {}}) == [
        "code: None -> {}",
        "code.: 3 -> None",
        "code.dotted..y.: 2 -> None",
        "code.empty: {} -> None",
        "code.nested.deeper: {} -> None",
        "code.nested.x: 1 -> None",
    ]


def test_mlflow_tags_and_metrics_list_leaves_only():
    manifest = {"versions": ODD, "git": {}, "device": "cpu", "not_a_section": {"z": 1}}
    tags = run_tags(manifest)
    # In TAG_SECTIONS' order; "versions" is the key "" of ODD with its trailing dot dropped.
    assert list(tags.items()) == [
        ("device", "cpu"),
        ("versions.nested.x", "1"),
        ("versions.dotted..y", "2"),
        ("versions", "3"),
    ]
    entry = {"epoch": 1, "test_loss": 0.5, "class_accuracy": {"cat": 50.0, "dog": None}, "extra": {}}
    assert epoch_metrics(entry) == {"test_loss": 0.5, "class_accuracy.cat": 50.0}


@given(
    st.recursive(st.integers(), lambda inner: st.dictionaries(st.sampled_from(["a", "b", "c"]), inner), max_leaves=8)
)
def test_differences_of_a_record_with_itself_are_none(value):
    assert differences({"k": value}, {"k": value}) == []
