"""Comparing two runs' records: an image folder's files are compared one by one and named."""

from image_classifier.manifest import dataset_file_differences
from image_classifier.run_comparison import environment_differences


def files(**entries) -> dict:
    return {"files": {path.replace("__", "/"): value for path, value in entries.items()}}


def entry(sha: str, klass: str = "cat", split: str = "train") -> dict:
    return {"class": klass, "split": split, "sha256": sha}


def test_changed_added_removed_and_relabelled_files_are_named():
    before = files(cat__a=entry("1"), cat__b=entry("2"), cat__c=entry("3"), cat__d=entry("4"))
    after = files(cat__a=entry("1"), cat__b=entry("9"), cat__d=entry("4", split="test"), cat__e=entry("5"))
    assert dataset_file_differences(before, after) == [
        "dataset_manifest: changed: cat/b (sha256 2 -> 9)",
        "dataset_manifest: removed: cat/c",
        "dataset_manifest: relabelled: cat/d (cat/train -> cat/test)",
        "dataset_manifest: added: cat/e",
    ]
    assert dataset_file_differences(before, before) == [] and dataset_file_differences(None, None) == []


def test_a_long_list_is_cut_and_counted():
    many = {f"f{i}": entry(str(i)) for i in range(30)}
    lines = dataset_file_differences({"files": {}}, {"files": many}, limit=5)
    assert len(lines) == 6 and lines[-1] == "dataset_manifest: ... and 25 more file(s)"


def test_reproduce_ignores_where_the_prepared_copy_is_but_names_a_changed_file():
    def record(sha: str, folder: str, reused: bool) -> dict:
        return {
            "dataset": {"folder": "/data", "sha256": sha, "prepared": {"folder": folder, "key": sha, "reused": reused}},
            "dataset_manifest": files(dog__x=entry(sha, "dog")),
        }

    assert environment_differences(record("1", "/cache/1", False), record("1", "/other/1", True)) == []
    assert environment_differences(record("1", "/cache/1", False), record("2", "/cache/2", True)) == [
        "dataset.sha256: '1' -> '2'",
        "dataset_manifest: changed: dog/x (sha256 1 -> 2)",
    ]


def test_a_file_name_that_is_not_plain_text_is_shown_escaped_on_its_one_line():
    """reproduce prints these lines to stdout: a name with bytes that were not UTF-8 raised UnicodeEncodeError
    where stdout is strict UTF-8 (a traceback after the whole re-run), and a line break forged a line."""
    latin1, broken = "cat/caf\udce9.jpg", "cat/a\ndataset_manifest: removed: cat/forged.jpg"
    lines = dataset_file_differences(files(), {"files": {latin1: entry("1"), broken: entry("2")}})
    assert lines == [
        "dataset_manifest: added: 'cat/a\\ndataset_manifest: removed: cat/forged.jpg'",
        "dataset_manifest: added: 'cat/caf\\udce9.jpg'",
    ]
    "\n".join(lines).encode("utf-8")
