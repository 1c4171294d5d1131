import json
import os
import pickle
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torchvision import transforms

from image_classifier.data.batches import ImageSplit, iterate_batches, num_batches, prepare_split, preprocess
from image_classifier.data.cifar import CIFAR10_URL, load_classes, load_dataset, safe_unpickle
from image_classifier.data.py2_pickle import py2_pickle_dict
from image_classifier.errors import DatasetError
from tests.conftest import FIXTURES, TEST_SIZE, TRAIN_SIZE


def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(dataset, target)
    return target


def write_batch(path: Path, batch: dict, protocol: int) -> None:
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def test_real_batches_meta_fixture_loads_through_the_allow_list():
    meta = safe_unpickle((FIXTURES / "cifar-10-batches-py" / "batches.meta").read_bytes(), Path("batches.meta"))
    assert meta["num_cases_per_batch"] == 10000
    assert meta["label_names"][:2] == ["airplane", "automobile"] and len(meta["label_names"]) == 10


PY2_BATCH = {  # what tests/fixtures/write_py2_batch.py pickled with Python 2.7, in Python 2's key order
    "data": (np.arange(3 * 3072) % 251).astype(np.uint8).reshape(3, 3072),
    "labels": [6, 9, 9],
    "batch_label": "training batch 1 of 5",
    "filenames": ["leptodactylus_pentadactylus_s_000004.png", "camion_s_000148.png", "tipper_truck_s_001250.png"],
}


def test_writer_reproduces_the_official_batches_meta_byte_for_byte():
    meta = safe_unpickle((FIXTURES / "cifar-10-batches-py" / "batches.meta").read_bytes(), Path("batches.meta"))
    assert py2_pickle_dict(meta) == (FIXTURES / "cifar-10-batches-py" / "batches.meta").read_bytes()


def test_writer_reproduces_a_batch_written_by_python2_byte_for_byte():
    assert py2_pickle_dict(PY2_BATCH) == (FIXTURES / "py2_written_batch").read_bytes()


def test_loader_reads_a_batch_written_by_python2(dataset, tmp_path):
    folder = copy_dataset(dataset, tmp_path)
    shutil.copy(FIXTURES / "py2_written_batch", folder / "cifar-10-batches-py" / "test_batch")
    test = load_dataset(folder).test
    assert test.labels.tolist() == [6, 9, 9]
    assert np.array_equal(test.images.numpy(), PY2_BATCH["data"].reshape(3, 3, 32, 32))


def test_generated_files_use_the_python2_opcodes_of_the_real_files(dataset):
    import pickletools

    payload = (dataset / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(payload)}
    assert {"SHORT_BINSTRING", "BINSTRING", "GLOBAL"} <= ops
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "STACK_GLOBAL"}
    assert b"numpy.core.multiarray\n_reconstruct" in payload


def test_loads_generated_dataset(dataset):
    data = load_dataset(dataset)
    assert data.train.images.shape == (TRAIN_SIZE, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.labels.shape == (TEST_SIZE,) and data.test.labels.dtype == torch.int64
    assert data.classes[0] == "plane" and len(data.classes) == 10
    assert set(data.file_sha256) == {
        "metadata.json",
        "cifar-10-batches-py/batches.meta",
        "cifar-10-batches-py/data_batch_1",
        "cifar-10-batches-py/data_batch_2",
        "cifar-10-batches-py/data_batch_3",
        "cifar-10-batches-py/data_batch_4",
        "cifar-10-batches-py/data_batch_5",
        "cifar-10-batches-py/test_batch",
    }


def test_arrays_equal_what_torchvision_reads_from_the_same_files(dataset):
    data = load_dataset(dataset)
    # torchvision checks the official md5s; generated files differ, the format does not.
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):
        for train, split in ((True, data.train), (False, data.test)):
            reference = torchvision.datasets.CIFAR10(str(dataset), train=train, download=False)
            assert np.array_equal(reference.data.transpose(0, 3, 1, 2), split.images.numpy())
            assert reference.targets == split.labels.tolist()


def test_preprocessing_is_bit_identical_to_the_notebooks_transforms(dataset):
    data = load_dataset(dataset)
    notebook_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    images_hwc = data.test.images[:20].permute(0, 2, 3, 1).numpy()
    expected = torch.stack([notebook_transform(image) for image in images_hwc])
    assert torch.equal(preprocess(data.test.images[:20]), expected)
    extremes = torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8)  # 1 x 3 x 1 x 2: black and white pixels
    assert preprocess(extremes).tolist() == [[[[-1.0, 1.0]]] * 3]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_batches_written_by_python3(dataset, tmp_path, protocol):
    folder = copy_dataset(dataset, tmp_path)
    batches = folder / "cifar-10-batches-py"
    original = load_dataset(folder)
    for path in [*batches.glob("data_batch_*"), batches / "test_batch"]:
        with path.open("rb") as stream:
            batch = pickle.load(stream, encoding="latin1")
        write_batch(path, batch, protocol)
    reread = load_dataset(folder)
    assert torch.equal(reread.train.images, original.train.images)
    assert torch.equal(reread.test.labels, original.test.labels)


def test_reads_bytes_keys_and_numpy_labels(dataset, tmp_path):
    folder = copy_dataset(dataset, tmp_path)
    path = folder / "cifar-10-batches-py" / "test_batch"
    images = np.zeros((4, 3072), dtype=np.uint8)
    write_batch(path, {b"data": images, b"labels": np.array([0, 1, 2, 3])}, 2)
    assert load_dataset(folder).test.labels.tolist() == [0, 1, 2, 3]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_RunsCode(), protocol=2),
        pickle.dumps({"data": _RunsCode(), "labels": [0]}, protocol=4),
        b"cos\nsystem\n(S'echo pwned'\ntR.",  # protocol 0 GLOBAL, as hand-written exploits use
        pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": print}, protocol=2),
    ],
)
def test_pickles_that_try_to_run_code_are_refused(dataset, tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    folder = copy_dataset(dataset, tmp_path)
    (folder / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
    with pytest.raises(DatasetError, match="refusing to load .*data_batch_2"):
        load_dataset(folder)
    assert not (tmp_path / "pwned.txt").exists()


def test_allow_listed_codecs_only_decode_latin1():
    payload = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DatasetError, match="rot13"):
        safe_unpickle(payload, Path("evil"))


@pytest.mark.parametrize(
    "batch, message",
    [
        ([1, 2, 3], "expected a dict"),
        ({"labels": [0]}, "missing 'data'"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
        ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "shape"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "1 labels for 2 images"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "labels range over 0..10"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, -1]}, "labels range"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, "list of integers"),
    ],
)
def test_malformed_batches_are_clear_errors(dataset, tmp_path, batch, message):
    folder = copy_dataset(dataset, tmp_path)
    write_batch(folder / "cifar-10-batches-py" / "test_batch", batch, 2)
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder)


def test_truncated_file_is_a_clear_error(dataset, tmp_path):
    folder = copy_dataset(dataset, tmp_path)
    path = folder / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="data_batch_1 is not a CIFAR-10 batch file"):
        load_dataset(folder)


def test_missing_dataset_names_the_folder_and_how_to_get_cifar10(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"classes": list("abcdefghij")}))
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(error.value)
    assert CIFAR10_URL in str(error.value)


@pytest.mark.parametrize("remove", ["test_batch", "data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5"])
def test_incomplete_dataset_is_an_error(dataset, tmp_path, remove):
    folder = copy_dataset(dataset, tmp_path)
    for name in remove.split():
        (folder / "cifar-10-batches-py" / name).unlink()
    with pytest.raises(DatasetError, match="no (test_batch|training batch)"):
        load_dataset(folder)


def test_any_number_of_training_batches_is_read_in_numeric_order(dataset, tmp_path):
    folder = copy_dataset(dataset, tmp_path)
    batches = folder / "cifar-10-batches-py"
    (batches / "data_batch_3").rename(batches / "data_batch_10")
    data = load_dataset(folder)
    assert len(data.train) == TRAIN_SIZE
    assert list(data.file_sha256)[-2] == "cifar-10-batches-py/data_batch_10"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("not json", "not valid metadata"),
        ('{"names": []}', "not valid metadata"),
        ('{"classes": ["a"]}', "at least two"),
        ('{"classes": ["a", "a"]}', "unique"),
    ],
)
def test_metadata_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_classes(tmp_path)


def test_batches_meta_must_agree_with_metadata(dataset, tmp_path):
    folder = copy_dataset(dataset, tmp_path)
    meta = {"num_cases_per_batch": 100, "label_names": ["a", "b"], "num_vis": 3072}
    (folder / "cifar-10-batches-py" / "batches.meta").write_bytes(py2_pickle_dict(meta))
    with pytest.raises(DatasetError, match="names 2 classes but metadata.json names 10"):
        load_dataset(folder)


def test_iterate_batches_covers_every_image_once_with_a_smaller_last_batch():
    split = ImageSplit(
        images=torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32), labels=torch.arange(10)
    )
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batches = list(iterate_batches(split, 4, torch.device("cpu"), order))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert num_batches(10, 4) == 3
    assert torch.equal(torch.cat([labels for _, labels in batches]), order)
    resumed = list(iterate_batches(split, 4, torch.device("cpu"), order, start_batch=2))
    assert torch.equal(resumed[0][1], batches[2][1])


@given(num_images=st.integers(0, 40), batch_size=st.integers(1, 12))
def test_num_batches_counts_the_batches_iterate_batches_gives(num_images, batch_size):
    split = ImageSplit(images=torch.zeros(num_images, 3, 1, 1, dtype=torch.uint8), labels=torch.arange(num_images))
    sizes = [len(labels) for _, labels in iterate_batches(split, batch_size, torch.device("cpu"))]
    assert num_batches(num_images, batch_size) == len(sizes) == -(-num_images // batch_size)
    assert sum(sizes) == num_images and all(size == batch_size for size in sizes[:-1])


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_a_prepared_split_gives_the_per_batch_values_bit_for_bit(memory_format):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=generator)  # every pixel value
    split = ImageSplit(images=images, labels=torch.arange(10))
    prepared = prepare_split(split, torch.device("cpu"), memory_format)
    assert prepared.images.is_contiguous(memory_format=memory_format)
    order = torch.randperm(10, generator=generator)
    for (raw, raw_labels), (ready, ready_labels) in zip(
        iterate_batches(split, 3, torch.device("cpu"), order), iterate_batches(prepared, 3, torch.device("cpu"), order)
    ):
        assert torch.equal(raw, ready) and torch.equal(raw_labels, ready_labels)


# --- which kind of dataset a folder is -------------------------------------------------------------------


def test_cifar_batches_are_recognised_and_read_as_before(dataset, tmp_path):
    from image_classifier.data.data import DataOptions, load_train_test_data

    data, direct = load_train_test_data(dataset), load_dataset(dataset)
    assert torch.equal(data.train.images, direct.train.images) and torch.equal(data.test.labels, direct.test.labels)
    assert data.fingerprint == direct.file_sha256 and data.record == {"sha256": direct.file_sha256}
    assert data.manifest is None and data.train.rows is None
    with pytest.raises(DatasetError, match="--image_size 24: the CIFAR-10 batches .* hold 32 x 32"):
        load_train_test_data(dataset, DataOptions(image_size=24))


def test_a_folder_that_is_neither_kind_says_what_either_needs(tmp_path):
    from image_classifier.data.data import load_train_test_data

    with pytest.raises(DatasetError, match="dataset folder .*missing not found: .*metadata.json"):
        load_train_test_data(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no dataset in .*<class>/ or train/<class>/.*metadata.json"):
        load_train_test_data(tmp_path)
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(DatasetError, match="no dataset in"):
        load_train_test_data(tmp_path)
    (tmp_path / "metadata.json").write_text('{"classes": ["a", "b"]}')
    with pytest.raises(DatasetError, match="no CIFAR-10 batches folder"):
        load_train_test_data(tmp_path)  # metadata.json alone: CIFAR-10 without its batches


def test_metadata_json_beside_class_folders_is_an_image_folder(tmp_path):
    from image_classifier.data.data import DataOptions, load_train_test_data
    from tests.data.folders import simple_folder

    simple_folder(tmp_path / "d", {"a": 3, "b": 3})
    (tmp_path / "d" / "metadata.json").write_text('{"classes": ["b", "a"]}')
    data = load_train_test_data(tmp_path / "d", DataOptions(cache_folder=tmp_path / "cache"))
    assert data.classes == ("b", "a") and data.record["format"] == "image folder"
