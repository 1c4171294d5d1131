"""Decoding once into the cache: the conversion rule, bad images, reuse, keys, locking, kills, read-only data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from image_classifier.data import prepared_decoding as prepared_module
from image_classifier.data.data import DataOptions, load_train_test_data
from image_classifier.data.folder import scan_folder
from image_classifier.data.prepared import prepare
from image_classifier.data.prepared_decoding import hash_files
from image_classifier.data.prepared_keys import IMAGES_FILE, LABELS_FILE, MANIFEST_FILE, cache_key, default_cache_folder
from image_classifier.errors import DatasetError
from image_classifier.images import conversion_settings, decode_image
from image_classifier.locking import exclusive_lock
from tests.conftest import REPO_ROOT
from tests.data.folders import (
    GOOD,
    MIXED_BAD,
    MIXED_SKIPPED,
    encode,
    mixed_folder,
    png,
    read_only,
    simple_folder,
    write,
)


def prepare_folder(root: Path, cache: Path, image_size: int = 32, processes: int = 1, **options):
    scan = scan_folder(root)
    hashes, unreadable = hash_files(root, [f.path for f in scan.files], processes)
    return scan, prepare(scan, hashes, unreadable, image_size, cache, processes=processes, **options)


def key_of(root: Path, image_size: int = 32) -> str:
    from image_classifier.data.prepared_keys import dataset_sha256

    scan = scan_folder(root)
    hashes, _ = hash_files(root, [f.path for f in scan.files], 1)
    return cache_key(dataset_sha256(scan, hashes), conversion_settings(image_size))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("mixed"))


@pytest.mark.parametrize("processes", [1, 2])
def test_every_bad_image_is_listed_in_one_error_before_training(mixed, tmp_path, processes):
    options = DataOptions(cache_folder=tmp_path, processes=processes)
    with pytest.raises(DatasetError) as error:
        load_train_test_data(mixed, options)
    message = str(error.value)
    assert message.startswith(f"{len(MIXED_BAD)} bad image(s) in {mixed}") and "--skip_bad_images" in message
    for path, reason in MIXED_BAD.items():
        assert any(line.startswith(f"  {path}: ") and reason in line for line in message.splitlines()), path


@pytest.mark.parametrize("image_size", [32, 24])
def test_skip_bad_images_keeps_every_good_one_converted_by_the_one_rule(mixed, tmp_path, image_size):
    data = load_train_test_data(mixed, DataOptions(image_size=image_size, cache_folder=tmp_path, skip_bad_images=True))
    manifest = data.manifest
    assert len(data.train) + len(data.test) == GOOD == len(manifest["files"])
    assert sorted(item["path"] for item in manifest["bad_images"]) == sorted(MIXED_BAD)
    assert {item["path"]: item["reason"] for item in manifest["skipped"]} == MIXED_SKIPPED
    assert data.record["bad_images_skipped"] == len(MIXED_BAD) and data.record["images"] == {"train": 12, "test": 2}
    # Counted by names that MLflow accepts as tag keys (letters, digits, "_", "-", ".", " ", "/").
    assert data.record["skipped"] == {"hidden_or_system": 4, "not_images": 1, "outside_class_folders": 1}
    rows = json.loads((Path(data.record["prepared"]["folder"]) / MANIFEST_FILE).read_text())["rows"]
    for split, name in ((data.train, "train"), (data.test, "test")):
        assert split.images.shape[1:] == (3, image_size, image_size)
        for position, row in enumerate(split.rows.tolist()):
            path = rows[row]["path"]
            expected = decode_image((mixed / path).read_bytes(), image_size=image_size)
            np.testing.assert_array_equal(split.images[row].numpy(), expected)
            assert data.classes[int(split.labels[position])] == manifest["files"][path]["class"]
            assert manifest["files"][path]["split"] == name


def test_the_prepared_files_are_plain_numpy_and_json(mixed, tmp_path):
    scan, prepared = prepare_folder(mixed, tmp_path)
    folder = tmp_path / prepared.key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([prepared.key, f"{prepared.key}.lock"])
    images, labels = np.load(folder / IMAGES_FILE, mmap_mode="r"), np.load(folder / LABELS_FILE)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert images.dtype == np.uint8 and images.shape == (GOOD, 3, 32, 32) and labels.dtype == np.int64
    assert [row["label"] for row in manifest["rows"]] == labels.tolist()
    assert manifest["classes"] == ["cat", "dog"] and manifest["conversion"] == conversion_settings(32)
    assert [row["path"] for row in manifest["rows"]] == sorted(row["path"] for row in manifest["rows"])
    assert [item["path"] for item in manifest["not_images"]] == ["train/cat/notes.txt"]


def test_the_manifest_is_written_as_before_the_refactor_keys_sorted(mixed, tmp_path):
    # Item 5 of issue 17: no output file's bytes change. The manifest has always been written with its keys
    # sorted (at every level), one space of indent, non-ASCII escaped.
    _, prepared = prepare_folder(mixed, tmp_path)
    text = (tmp_path / prepared.key / MANIFEST_FILE).read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"


def test_the_same_files_reuse_the_cache_without_decoding(tmp_path, monkeypatch):
    root = simple_folder(tmp_path / "data", {"a": 3, "b": 3})
    _, first = prepare_folder(root, tmp_path / "cache")
    assert not first.reused

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(prepared_module, "decode_chunk", no_decoding)
    _, again = prepare_folder(root, tmp_path / "cache")
    assert again.reused and again.key == first.key
    np.testing.assert_array_equal(again.images, first.images)


def test_any_change_to_the_files_or_the_conversion_gives_a_new_key(tmp_path):
    root = simple_folder(tmp_path, {"a": 3, "b": 3})
    keys = {"start": key_of(root), "size 24": key_of(root, 24)}
    write(root / "a" / "0.png", png(99))
    keys["changed"] = key_of(root)
    write(root / "b" / "new.png", png(98))
    keys["added"] = key_of(root)
    (root / "a" / "1.png").unlink()
    keys["removed"] = key_of(root)
    (root / "a" / "2.png").rename(root / "b" / "2.png")
    keys["relabelled"] = key_of(root)
    assert len(set(keys.values())) == len(keys), keys
    assert key_of(root) == keys["relabelled"]


def test_two_processes_waiting_on_the_lock_prepare_once(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 20, "b": 20})
    cache = tmp_path / "cache"
    cache.mkdir()
    script = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from tests.data.test_prepared import prepare_folder\n"
        "print('reused' if prepare_folder(Path(sys.argv[1]), Path(sys.argv[2]))[1].reused else 'decoded')\n"
    )
    with exclusive_lock(cache / f"{key_of(root)}.lock"):  # both must queue behind this process
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(root), str(cache)],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 300
        logs = [Path(f"/proc/{p.pid}/fd/2") for p in processes]
        while not all(_has_waited(process) for process in processes):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), logs
            time.sleep(0.2)
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert sorted(out.strip() for out, _ in outputs) == ["decoded", "reused"]
    assert all("another process is preparing" in err for _, err in outputs)


def _has_waited(process: subprocess.Popen) -> bool:
    # Blocked in flock(2) on the key's lock: the kernel lists the wait in /proc/locks against its pid.
    return any(f" {process.pid} " in line and "->" in line for line in Path("/proc/locks").read_text().splitlines())


KILLER = """
import multiprocessing, os, signal, sys
from pathlib import Path
from tests.data.test_prepared import prepare_folder

def kill_after_first_chunk(done, total):
    print(" ".join(str(child.pid) for child in multiprocessing.active_children()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

prepare_folder(Path(sys.argv[1]), Path(sys.argv[2]), processes=2, on_progress=kill_after_first_chunk)
"""


def test_a_kill_while_preparing_leaves_nothing_used_and_the_next_run_prepares_cleanly(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 150, "b": 150})
    cache = tmp_path / "cache"
    output = tmp_path / "output.txt"
    with output.open("w") as stream:  # a file, not a pipe: a surviving worker would hold a pipe open
        killed = subprocess.run([sys.executable, "-c", KILLER, str(root), str(cache)], cwd=REPO_ROOT, stdout=stream)
    assert killed.returncode == -signal.SIGKILL
    key = key_of(root)
    assert not (cache / key).exists()
    assert [p.name for p in cache.glob(f"{key}.tmp-*")], "the half-written folder is what a kill leaves"
    workers = [int(pid) for pid in output.read_text().split()]
    assert len(workers) == 2, output.read_text()
    deadline = time.monotonic() + 60
    try:
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "worker processes outlived the killed run"
            time.sleep(0.1)
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)

    _, restarted = prepare_folder(root, cache, processes=2)
    assert not restarted.reused and not list(cache.glob(f"{key}.tmp-*"))
    _, reference = prepare_folder(root, tmp_path / "reference")
    np.testing.assert_array_equal(restarted.images, reference.images)
    assert restarted.rows == reference.rows


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_a_read_only_dataset_folder_just_works(tmp_path):
    root = mixed_folder(tmp_path / "data")
    with read_only(root, tmp_path / "mounted") as view:
        with pytest.raises(OSError):
            (view / "probe").write_bytes(b"")
        data = load_train_test_data(view, DataOptions(cache_folder=tmp_path / "cache", skip_bad_images=True))
    assert len(data.train) + len(data.test) == GOOD


def test_the_cache_is_never_inside_the_dataset_and_an_unwritable_one_is_a_clear_error(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(DatasetError, match="inside the dataset folder"):
        prepare_folder(root, root / "cache")
    blocker = write(tmp_path / "file", b"")
    with pytest.raises(DatasetError, match="cannot create the prepared-data cache .*--cache_folder"):
        prepare_folder(root, blocker / "cache")


def test_the_default_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE", str(tmp_path / "mine"))
    assert default_cache_folder() == tmp_path / "mine"
    monkeypatch.delenv("IMAGE_CLASSIFIER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_folder() == tmp_path / "xdg" / "image_classifier" / "prepared"


def test_an_image_declaring_more_pixels_than_the_limit_is_a_bad_image(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    write(root / "a" / "big.png", png(5, (40, 40)))
    data = load_train_test_data(
        root, DataOptions(cache_folder=tmp_path / "cache", max_pixels=1600 - 1, skip_bad_images=True)
    )
    assert [(item["path"], item["reason"][:15]) for item in data.manifest["bad_images"]] == [
        ("a/big.png", "image too large")
    ]


def test_a_file_that_cannot_be_read_is_a_bad_image(tmp_path, monkeypatch):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    scan = scan_folder(root)
    (root / "a" / "0.png").unlink()  # gone between the listing and the reading
    hashes, unreadable = hash_files(root, [f.path for f in scan.files], 1)
    prepared = prepare(scan, hashes, unreadable, 32, tmp_path / "cache", processes=1)
    assert prepared.bad_images == [
        {"path": "a/0.png", "sha256": None, "reason": "cannot read it: No such file or directory"}
    ]


def test_leakage_is_reported_naming_the_files(tmp_path, caplog):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2}, "train")
    simple_folder(root, {"a": 1, "b": 1}, "test", seed=5)
    write(root / "test" / "b" / "copy.png", (root / "train" / "a" / "1.png").read_bytes())
    data = load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache"))
    assert data.record["leaked_test_images"] == 1
    assert data.manifest["leaks"] == [{"train": "train/a/1.png", "test": "test/b/copy.png"}]
    assert "test/b/copy.png = train/a/1.png" in caplog.text


def test_a_class_whose_files_are_not_images_is_an_error(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 2})
    write(root / "b" / "notes.txt", b"nothing to see")
    with pytest.raises(DatasetError, match="without any training image that decodes: b"):
        load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache"))


def test_a_folder_split_by_test_fraction_records_it(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 10, "b": 5})
    data = load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache", test_fraction=0.2, seed=3))
    assert (len(data.train), len(data.test)) == (12, 3)
    assert data.record["split"] == {"from": "--test_fraction", "test_fraction": 0.2, "seed": 3}
    other = load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache", test_fraction=0.2, seed=4))
    assert other.record["prepared"]["reused"] and not np.array_equal(other.test.rows, data.test.rows)


def test_a_file_changed_while_preparing_stops_it_and_leaves_nothing(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    scan = scan_folder(root)
    hashes, unreadable = hash_files(root, [f.path for f in scan.files], 1)
    write(root / "b" / "1.png", png(77))  # after hashing: the cache would not hold what its key says
    with pytest.raises(DatasetError, match="files changed while the dataset was being prepared: b/1.png"):
        prepare(scan, hashes, unreadable, 32, tmp_path / "cache", processes=1)
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".lock"]


def test_a_cache_folder_that_cannot_be_written_is_one_clear_error(tmp_path):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    (tmp_path / "cache").mkdir()
    with read_only(tmp_path / "cache", tmp_path / "mounted") as cache:
        with pytest.raises(DatasetError, match="cannot write the prepared dataset into .*: Read-only|Permission"):
            prepare_folder(root, cache)


def test_a_class_without_test_images_is_allowed_and_said(tmp_path, caplog):
    root = simple_folder(tmp_path / "data", {"cat": 2, "dog": 2}, "train")
    simple_folder(root, {"cat": 1}, "test")
    data = load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache"))
    assert data.classes == ("cat", "dog") and len(data.test) == 1
    assert "classes without test images (their test accuracy is n/a): dog" in caplog.text


def test_a_test_folder_without_images_is_an_error_not_a_silent_split(tmp_path):
    root = simple_folder(tmp_path / "data", {"cat": 3, "dog": 3}, "train")
    (root / "test" / "cat").mkdir(parents=True)  # made, never filled: not a reason to split train/ instead
    with pytest.raises(DatasetError, match="the test split holds no image"):
        load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache"))


@pytest.mark.parametrize("processes", [1, 2])
def test_a_photo_with_a_mistyped_exif_tag_is_prepared_not_a_crash(tmp_path, processes):
    """Such a photo made the worker raise AttributeError: the whole preparation stopped with a traceback that
    named no file. Its pixels are good: it is prepared, turned as its orientation says."""
    from tests.test_images import MISTYPED_EXIF

    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    write(root / "a" / "photo.jpg", encode(photo, "JPEG", exif=MISTYPED_EXIF["Software as a number"]))
    scan, prepared = prepare_folder(root, tmp_path / "cache", processes=processes)
    assert prepared.bad_images == [] and [row["path"] for row in prepared.rows][0] == "a/0.png"
    row = [row["path"] for row in prepared.rows].index("a/photo.jpg")
    assert prepared.images[row].shape == (3, 32, 32)
    np.testing.assert_array_equal(prepared.images[row], decode_image((root / "a" / "photo.jpg").read_bytes()))


def test_any_exception_the_decoder_raises_makes_a_bad_image_named_in_the_error(tmp_path, monkeypatch):
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    write(root / "a" / "crafted.png", png(9))
    crafted = (root / "a" / "crafted.png").read_bytes()
    real_load = ImageFile.ImageFile.load

    def crafted_file_breaks_the_plugin(self):
        if self.fp is not None and self.fp.getvalue() == crafted:
            raise IndexError("list index out of range")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", crafted_file_breaks_the_plugin)
    with pytest.raises(DatasetError) as error:
        load_train_test_data(root, DataOptions(cache_folder=tmp_path / "cache", processes=1))
    assert "  a/crafted.png: the image cannot be decoded (corrupt): IndexError: list index out of range" in str(
        error.value
    )


def _edit_npy(path: Path, edit) -> None:
    array = np.load(path)
    np.save(path, edit(np.array(array)), allow_pickle=True)


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _relabel_both(folder: Path) -> None:
    _edit_manifest(folder / MANIFEST_FILE, lambda m: m["rows"][0].update(label=1 - m["rows"][0]["label"]))
    _edit_npy(folder / LABELS_FILE, lambda labels: np.concatenate([1 - labels[:1], labels[1:]]))


TAMPERED = {
    "images as float32": lambda folder: _edit_npy(folder / IMAGES_FILE, lambda a: a.astype(np.float32)),
    "images of another size": lambda folder: _edit_npy(folder / IMAGES_FILE, lambda a: a[:, :, :16, :16]),
    "labels as int32": lambda folder: _edit_npy(folder / LABELS_FILE, lambda a: a.astype(np.int32)),
    "labels shuffled": lambda folder: _edit_npy(folder / LABELS_FILE, lambda a: a[::-1]),
    "labels out of range": lambda folder: _edit_npy(folder / LABELS_FILE, lambda a: a + 7),
    "labels as objects": lambda folder: _edit_npy(folder / LABELS_FILE, lambda a: a.astype(object)),
    "a row and its label relabelled": _relabel_both,
    "a row dropped": lambda folder: _edit_manifest(folder / MANIFEST_FILE, lambda m: m["rows"].pop()),
    "no shape": lambda folder: _edit_manifest(folder / MANIFEST_FILE, lambda m: m.pop("shape")),
    "rows not a list": lambda folder: _edit_manifest(folder / MANIFEST_FILE, lambda m: m.update(rows=7)),
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_damaged_or_edited_cache_is_refused_never_trained_on(tmp_path, tamper):
    """A reused cache was checked against its manifest's shape only: float pixels were fed to the model raw
    (the batches skip normalising floats), other labels were trained on, a missing key was a traceback."""
    root = simple_folder(tmp_path / "data", {"a": 3, "b": 3})
    _, first = prepare_folder(root, tmp_path / "cache")
    tamper(first.folder)
    with pytest.raises(DatasetError, match=f"the prepared dataset {first.folder} is damaged or was changed .*: delete"):
        prepare_folder(root, tmp_path / "cache")


def _sparse(path: Path, header: bytes, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        stream.write(header)
        stream.truncate(size)  # a hole: no disk used, zeros when read


def test_a_file_larger_than_any_allowed_image_is_judged_by_its_first_bytes_never_read_whole(tmp_path):
    """A phone export's video beside its photos was read whole into memory to be judged: a 2 GB .MOV made
    preparing hold 2.5 GB (in every worker that met one). Here the pixel limit is 1,024, so any file above
    1,024 x 8 bytes + 64 MB is too large; the files are 80 MB holes."""
    root = simple_folder(tmp_path / "data", {"a": 2, "b": 2})
    size = 80 << 20
    _sparse(root / "a" / "IMG_0001.MOV", b"\0\0\0\x14ftypqt  ", size)
    _sparse(root / "a" / "huge.png", png(1)[:64], size)
    _sparse(root / "b" / "blob.bin", png(2)[:64], size)  # no image suffix, but the bytes of one
    tracemalloc.start()
    try:
        _, prepared = prepare_folder(root, tmp_path / "cache", max_pixels=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes held"
    assert [row["path"] for row in prepared.rows] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert prepared.not_images == [{"path": "a/IMG_0001.MOV", "sha256": prepared.not_images[0]["sha256"]}]
    reason = "a file of 83,886,080 bytes, more than any image of at most 1,024 pixels would take"
    assert [(item["path"], item["reason"]) for item in prepared.bad_images] == [
        ("a/huge.png", reason),
        ("b/blob.bin", reason),
    ]


def test_the_array_files_blocks_are_reserved_before_any_pixel_is_written(tmp_path, monkeypatch):
    """The array was a sparse file written through a memory mapping: on a full disk the first page that found
    no room was a SIGBUS, which killed the run without a word (one process) or broke the pool (a traceback),
    instead of README's `error: cannot write the prepared dataset ...: No space left on device`. Seen on a
    2 MB tmpfs with 80 images at 128 x 128; now that is the one-line error, as the reservation fails."""
    root = simple_folder(tmp_path / "data", {"a": 3, "b": 3})
    real_decode_chunk, allocated = prepared_module.decode_chunk, []

    def decode_chunk(images_path, *args):
        status = os.stat(images_path)
        allocated.append((status.st_blocks * 512, status.st_size))
        return real_decode_chunk(images_path, *args)

    monkeypatch.setattr(prepared_module, "decode_chunk", decode_chunk)
    _, prepared = prepare_folder(root, tmp_path / "cache", image_size=64)
    assert len(prepared.rows) == 6 and len(allocated) == 1
    blocks, size = allocated[0]
    assert blocks >= size > 6 * 3 * 64 * 64


def _killed_on_the_spot(*args):
    """Stands for a decoding chunk in a worker (a module-level function: tasks reach workers pickled)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_by_the_system_is_one_clear_error(tmp_path, monkeypatch):
    """A decoding worker killed outright (the kernel's OOM killer, a SIGBUS) was a BrokenProcessPool traceback."""
    root = simple_folder(tmp_path / "data", {"a": 3, "b": 3})
    monkeypatch.setattr(prepared_module, "decode_chunk", _killed_on_the_spot)
    with pytest.raises(DatasetError, match="a worker process reading the images died .*out of memory"):
        prepare_folder(root, tmp_path / "cache", processes=2)
    assert [path.name for path in (tmp_path / "cache").iterdir() if ".tmp-" in path.name] == []
