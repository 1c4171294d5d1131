"""Image folders without decoding: layouts, classes, errors, skipped files, splits and leakage."""

from __future__ import annotations

import inspect
import json
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_classifier.data import folder as folder_module
from image_classifier.data.folder import bad_images_message, scan_folder
from image_classifier.data.splits import leaked_pairs, stratified_split
from image_classifier.errors import DatasetError
from tests.data.folders import png, simple_folder, write


def skipped(scan) -> dict[str, str]:
    return dict(scan.skipped)


@pytest.mark.parametrize("test_name", ["test", "val", "validation", "Validation"])
def test_train_and_test_folders_give_the_splits_and_sorted_classes(tmp_path, test_name):
    simple_folder(tmp_path, {"dog": 2, "cat": 3}, "Train" if test_name == "Validation" else "train")
    simple_folder(tmp_path, {"cat": 1, "dog": 1}, test_name, seed=1)
    scan = scan_folder(tmp_path)
    assert scan.classes == ("cat", "dog") and scan.classes_from == "folder names"
    assert scan.has_test_split and test_name in scan.layout
    by_split = {split: sorted(f.path for f in scan.files if f.split == split) for split in ("train", "test")}
    assert len(by_split["train"]) == 5 and len(by_split["test"]) == 2
    assert all(f.label == scan.classes.index(f.path.split("/")[1]) for f in scan.files)
    assert [f.path for f in scan.files] == sorted(f.path for f in scan.files)


def test_a_class_tree_or_a_lone_train_folder_is_left_to_test_fraction(tmp_path):
    tree = simple_folder(tmp_path / "tree", {"b": 2, "a": 2})
    scan = scan_folder(tree)
    assert scan.layout == "class folders" and scan.classes == ("a", "b")
    assert {f.split for f in scan.files} == {None} and not scan.has_test_split
    lone = simple_folder(tmp_path / "lone", {"b": 2, "a": 2}, "train")
    scan = scan_folder(lone)
    assert "split by --test_fraction" in scan.layout and {f.split for f in scan.files} == {None}


def test_class_order_is_plain_sorted_like_torchvision(tmp_path):
    names = ["class10", "class2", "B", "a", "été", "Zebra"]
    simple_folder(tmp_path, {name: 1 for name in names})
    assert scan_folder(tmp_path).classes == tuple(sorted(names)) == ("B", "Zebra", "a", "class10", "class2", "été")


def test_metadata_json_fixes_the_class_order(tmp_path):
    simple_folder(tmp_path, {"cat": 1, "dog": 1, "bird": 1}, "train")
    simple_folder(tmp_path, {"cat": 1, "dog": 1, "bird": 1}, "test")
    (tmp_path / "metadata.json").write_text(json.dumps({"classes": ["dog", "cat", "bird"]}))
    scan = scan_folder(tmp_path)
    assert scan.classes == ("dog", "cat", "bird") and scan.classes_from == "metadata.json"
    assert {f.path: f.label for f in scan.files}["train/bird/0.png"] == 2
    assert "metadata.json" not in skipped(scan)


def test_metadata_json_matches_decomposed_unicode_folder_names(tmp_path):
    simple_folder(tmp_path, {unicodedata.normalize("NFD", "café"): 1, "thé": 1})
    (tmp_path / "metadata.json").write_text(json.dumps({"classes": ["thé", "café"]}), encoding="utf-8")
    assert scan_folder(tmp_path).classes == ("thé", "café")


@pytest.mark.parametrize(
    "classes, message",
    [
        (["cat"], "at least two"),
        (["cat", "dog", "bird"], "classes that have no training folder: bird"),
        (["cat", "cow"], "not listed in it: dog"),
    ],
)
def test_metadata_json_that_disagrees_with_the_folders_is_an_error(tmp_path, classes, message):
    simple_folder(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "metadata.json").write_text(json.dumps({"classes": classes}))
    with pytest.raises(DatasetError, match=message):
        scan_folder(tmp_path)


def test_layout_errors_name_the_problem(tmp_path):
    cases = {
        "extra test class": ({"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "Dog": 1}}, "train/ lacks: Dog"),
        "two test splits": ({"train": {"cat": 1, "dog": 1}, "test": {"cat": 1}, "val": {"dog": 1}}, "test/ and val/"),
        "val without train": ({"val": {"cat": 1}}, "no train/ folder"),
        "no class folder": ({"train": {}}, "no class folder"),
        # One of the two was used and the other skipped with a count in run.json: half the images gone.
        "train in two cases": ({"train": {"cat": 1, "dog": 1}, "Train": {"cat": 1, "dog": 1}}, "Train/ and train/"),
        "test in two cases": (
            {"train": {"cat": 1, "dog": 1}, "TEST": {"cat": 1}, "test": {"dog": 1}},
            "TEST/ and test/",
        ),
    }
    for name, (splits, message) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        for split, classes in splits.items():
            (root / split).mkdir(parents=True)
            simple_folder(root, classes, split)
        with pytest.raises(DatasetError, match=message):
            scan_folder(root)


def test_an_empty_class_folder_is_an_error_and_a_class_missing_from_test_is_not(tmp_path):
    simple_folder(tmp_path, {"cat": 2}, "train")
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetError, match="without any file .*: dog"):
        scan_folder(tmp_path)
    simple_folder(tmp_path, {"dog": 1}, "train")
    simple_folder(tmp_path, {"cat": 1}, "test")
    assert scan_folder(tmp_path).classes == ("cat", "dog")


def test_hidden_system_and_loose_files_are_skipped_and_named(tmp_path):
    simple_folder(tmp_path, {"cat": 1, "dog": 1}, "train")
    simple_folder(tmp_path, {"cat": 1}, "test")
    for path in ("train/cat/.DS_Store", "train/cat/._0.png", "train/dog/Thumbs.db", "train/dog/DESKTOP.INI"):
        write(tmp_path / path, b"\x00")
    write(tmp_path / "__MACOSX" / "train" / "cat" / "._0.png", b"\x00")
    write(tmp_path / ".git" / "HEAD", b"ref")
    write(tmp_path / "train" / "cat" / ".thumbnails" / "0.png", png(0))
    write(tmp_path / "LICENSE", b"MIT")
    write(tmp_path / "train" / "readme.txt", b"cats and dogs")
    (tmp_path / "extra").mkdir()
    scan = scan_folder(tmp_path)
    assert skipped(scan) == {
        ".git": "hidden or system file",
        "__MACOSX": "hidden or system file",
        "train/cat/.DS_Store": "hidden or system file",
        "train/cat/._0.png": "hidden or system file",
        "train/cat/.thumbnails": "hidden or system file",
        "train/dog/Thumbs.db": "hidden or system file",
        "train/dog/DESKTOP.INI": "hidden or system file",
        "LICENSE": "not inside a class folder",
        "train/readme.txt": "not inside a class folder",
        "extra": "folder beside train/ that is not a test split",
    }
    assert sorted(f.path for f in scan.files) == ["test/cat/0.png", "train/cat/0.png", "train/dog/0.png"]


def test_links_inside_are_followed_and_links_leaving_or_looping_are_skipped(tmp_path):
    root = simple_folder(tmp_path / "data", {"cat": 2, "dog": 1})
    outside = write(tmp_path / "secret.png", png(9))
    (root / "cat" / "outside.png").symlink_to(outside)
    (root / "cat" / "outside_folder").symlink_to(tmp_path, target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)
    (root / "cat" / "broken.png").symlink_to(root / "nothing.png")
    (root / "dog" / "alias.png").symlink_to(root / "cat" / "0.png")
    (root / "dog" / "more").symlink_to(Path("..") / "cat", target_is_directory=True)  # relative, inside
    os.mkfifo(root / "dog" / "pipe.png")
    scan = scan_folder(root)
    assert skipped(scan) == {
        "cat/outside.png": "symbolic link leading outside the dataset folder",
        "cat/outside_folder": "symbolic link leading outside the dataset folder",
        "cat/loop": "symbolic link loop",
        "cat/broken.png": "broken symbolic link",
        "dog/pipe.png": "not a regular file",
        "dog/more/loop": "symbolic link loop",
        "dog/more/outside.png": "symbolic link leading outside the dataset folder",
        "dog/more/outside_folder": "symbolic link leading outside the dataset folder",
        "dog/more/broken.png": "broken symbolic link",
    }
    assert [f.path for f in scan.files] == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/alias.png"] + [
        "dog/more/0.png",
        "dog/more/1.png",
    ]


def test_unicode_and_spaces_in_names(tmp_path):
    write(tmp_path / "chats noirs" / "photo 1 ☃.png", png(0))
    write(tmp_path / "日本" / "写真.png", png(1))
    scan = scan_folder(tmp_path)
    assert scan.classes == ("chats noirs", "日本")
    assert [f.path for f in scan.files] == ["chats noirs/photo 1 ☃.png", "日本/写真.png"]


def test_nothing_is_written_into_the_dataset_folder(tmp_path):
    simple_folder(tmp_path, {"cat": 2, "dog": 2})
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    scan_folder(tmp_path)
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(2, 40), min_size=2, max_size=6),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32),
)
def test_the_split_is_stratified_seeded_and_never_empties_a_side(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    classes = [f"c{i}" for i in range(len(counts))]
    test = stratified_split(labels, fraction, seed, classes)
    for label, count in enumerate(counts):
        in_test = int(test[labels == label].sum())
        assert in_test == min(max(round(count * fraction), 1), count - 1)
    assert np.array_equal(test, stratified_split(labels, fraction, seed, classes))


def test_the_split_depends_on_the_seed_and_refuses_classes_too_small():
    labels = np.repeat([0, 1], 50)
    assert not np.array_equal(stratified_split(labels, 0.2, 0, "ab"), stratified_split(labels, 0.2, 1, "ab"))
    with pytest.raises(DatasetError, match="at least 2 images .*: b \\(1\\)"):
        stratified_split(np.array([0, 0, 1]), 0.5, 0, ["a", "b"])
    with pytest.raises(DatasetError, match="between 0 and 1"):
        stratified_split(labels, 1.0, 0, "ab")


def test_leakage_pairs_name_the_training_and_the_test_file():
    paths = ["train/a/1.png", "train/b/2.png", "test/a/3.png", "test/b/4.png", "train/a/5.png"]
    hashes = ["h1", "h2", "h2", "h9", "h9"]
    is_test = np.array([False, False, True, True, False])
    assert leaked_pairs(paths, hashes, is_test) == [
        ("train/b/2.png", "test/a/3.png"),
        ("train/a/5.png", "test/b/4.png"),
    ]


def test_system_names_are_compared_in_lower_case():
    assert all(name == name.lower() for name in folder_module.SYSTEM_NAMES)


@pytest.mark.parametrize("name", [os.fsdecode(b"caf\xe9"), "two\nlines", "tab\there", "bell\x07", "del\x7f"], ids=ascii)
def test_a_class_folder_name_that_is_not_plain_text_is_refused_naming_it(tmp_path, name):
    """A Latin-1 folder name (an old archive's) became a class with a lone surrogate: run.json kept it, and then
    every answer of the service naming it failed (UTF-8 cannot encode it, a 500) and the predict command's
    table and CSV output raised UnicodeEncodeError wherever stdout is strict UTF-8; a line break in a class
    name forged lines in logs and tables."""
    simple_folder(tmp_path, {"dog": 2})
    write(tmp_path / name / "0.png", png(7))
    with pytest.raises(DatasetError, match="not UTF-8 text or hold control characters") as error:
        scan_folder(tmp_path)
    assert repr(name) in str(error.value)
    str(error.value).encode("utf-8")  # the error line itself prints anywhere


def test_a_class_folder_nested_deeper_than_the_recursion_limit_is_listed(tmp_path):
    """Listing recursed once per folder level: a tree 1,100 levels deep raised RecursionError (a traceback
    naming no file). Shown here with the interpreter's limit lowered to 60 frames above this test's, and a
    tree 200 levels deep (pytest's own clean-up of tmp_path recurses too)."""
    simple_folder(tmp_path, {"dog": 2})
    deep = tmp_path / "cat" / Path(*["d"] * 200)
    write(deep / "deep.png", png(3))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 60)
    try:
        scan = scan_folder(tmp_path)
    finally:
        sys.setrecursionlimit(limit)
    assert [f.path for f in scan.files if f.label == 0] == ["cat/" + "d/" * 200 + "deep.png"]


def test_bad_image_lines_show_a_name_that_is_not_plain_text_escaped():
    message = bad_images_message(
        Path("data"), [{"path": "a/x\ny.png", "reason": "r"}, {"path": "a/ok.png", "reason": "r"}]
    )
    assert message.splitlines()[1:] == ["  'a/x\\ny.png': r", "  a/ok.png: r"]
