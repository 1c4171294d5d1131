"""Image folders: the layout, the classes, and every file that is skipped or bad (the draw of a test split
and the leakage check live in splits.py; the dataset's hash in prepared_keys.py).

Two layouts are recognised (docs/training.md, "Image folders", shows them):
- `train/<class>/...` with one of `test/`, `val/` or `validation/` beside it (names in any case) as the test
  split; `train/` alone is split like a class tree;
- `<class>/...` folders at the top, split by `--test_fraction`: stratified (that fraction of each class,
  rounded, at least one image on each side), drawn from the run's seed, the same on every machine.
Files may sit at any depth under a class folder (its name is the label, as torchvision's `ImageFolder`).

Classes are the class folders' names in plain `sorted()` order (code-point order, torchvision's rule: a
model trained with `ImageFolder` lines up with ours), unless `metadata.json` at the top fixes them:
`{"classes": ["cat", "dog", ...]}`; then every class folder must be listed and every listed class must
have a training folder.

Refused with an error naming them: a class folder the training split lacks (in the test split, or not in
metadata.json), a listed class without a folder, a training class with no image, two test folders, a split
folder in two cases (`train/` and `Train/`: one would be skipped), and a
class folder whose name is not UTF-8 text (bytes of another encoding) or holds a control character (a
line break...): a class name reaches run.json, logs, tables and every answer of the service, which would
fail on it or show it garbled.
A training class absent from the test split is allowed (its test accuracy is reported as n/a) and warned.

Skipped and counted (listed in run.json, never an error): hidden and system files and folders (names
starting with ".", such as `.DS_Store`, `._photo.jpg` and `.git/`, and `Thumbs.db`, `desktop.ini`,
`__MACOSX/`...), files outside a class folder, symbolic links that lead outside the dataset folder (or
in a loop), things that are not regular files (pipes, sockets, devices), and files that are not images by
their bytes unless their suffix says they should be (`notes.txt` is skipped; a `.jpg` that does not
decode is a bad image: `prepared_decoding.py` judges the bytes).
Nothing here reads a file's content; nothing is ever written into the dataset folder.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from image_classifier.data.cifar import METADATA_FILE, load_classes
from image_classifier.errors import DatasetError
from image_classifier.manifest import shown_path

logger = logging.getLogger(__name__)

TRAIN_FOLDER = "train"
TEST_FOLDERS = ("test", "val", "validation")
TRAIN, TEST = "train", "test"
DEFAULT_TEST_FRACTION = 0.2
# Names that file managers and archivers leave behind (compared in lower case); "." names are hidden anyway.
SYSTEM_NAMES = frozenset(
    {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "$recycle.bin", "system volume information", "@eadir"}
)

# Reasons a file or folder is skipped: run.json lists each with its reason and counts them by short name.
HIDDEN = "hidden or system file"
OUTSIDE_CLASS = "not inside a class folder"
OUTSIDE_LINK = "symbolic link leading outside the dataset folder"
LINK_LOOP = "symbolic link loop"
BROKEN_LINK = "broken symbolic link"
NOT_REGULAR = "not a regular file"
NOT_SPLIT = "folder beside train/ that is not a test split"
NOT_IMAGE = "not an image (by its bytes and suffix)"
SKIP_COUNT_NAMES = {
    HIDDEN: "hidden_or_system",
    OUTSIDE_CLASS: "outside_class_folders",
    OUTSIDE_LINK: "links_leaving_the_folder",
    LINK_LOOP: "link_loops",
    BROKEN_LINK: "broken_links",
    NOT_REGULAR: "not_regular_files",
    NOT_SPLIT: "folders_beside_the_splits",
    NOT_IMAGE: "not_images",
}


@dataclass(frozen=True)
class FolderFile:
    """One candidate image: its path relative to the dataset folder (POSIX separators), label and split.

    `split` is "train" or "test" when the layout says so, None when `--test_fraction` decides.
    """

    path: str
    label: int
    split: str | None


@dataclass(frozen=True)
class FolderScan:
    root: Path
    layout: str  # how the splits were found, for people: "train/ + val/", "class folders"...
    classes: tuple[str, ...]
    classes_from: str  # "metadata.json" or "folder names"
    files: tuple[FolderFile, ...]  # sorted by path
    skipped: tuple[tuple[str, str], ...]  # (path, reason)
    test_folder: str | None = None  # "test", "val"... as named; None: --test_fraction splits

    @property
    def has_test_split(self) -> bool:
        return self.test_folder is not None


def is_hidden_or_system(name: str) -> bool:
    return name.startswith(".") or name.casefold() in SYSTEM_NAMES


def looks_like_image_folder(root: Path) -> bool:
    """Whether `root` holds at least one visible folder (a class or a split): CIFAR-10 batches hold none."""
    try:
        with os.scandir(root) as entries:
            return any(not is_hidden_or_system(entry.name) and entry.is_dir() for entry in entries)
    except OSError:
        return False


# --- walking --------------------------------------------------------------------------------------------


class _Walker:
    """Lists the files under class folders, following symbolic links that stay inside the dataset folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.skipped: list[tuple[str, str]] = []

    def relative(self, path: str) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def inside(self, real_path: str) -> bool:
        return real_path == self.real_root or real_path.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def entries(self, folder: str) -> list[os.DirEntry]:
        """Visible entries of `folder` sorted by name; the hidden ones are recorded as skipped."""
        try:
            with os.scandir(folder) as scanned:
                entries = sorted(scanned, key=lambda entry: entry.name)
        except OSError as exc:
            raise DatasetError(f"cannot list {folder}: {exc.strerror or exc}") from None
        visible = []
        for entry in entries:
            if is_hidden_or_system(entry.name):
                self.skipped.append((self.relative(entry.path), HIDDEN))
            else:
                visible.append(entry)
        return visible

    def kind(self, entry: os.DirEntry, visited: set[str]) -> str | None:
        """ "dir", "file", or None (recorded as skipped): a link must stay inside the folder and not loop."""
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not self.inside(real):
                self.skipped.append((self.relative(entry.path), OUTSIDE_LINK))
                return None
            if not os.path.exists(real):
                self.skipped.append((self.relative(entry.path), BROKEN_LINK))
                return None
            if os.path.isdir(real) and real in visited:
                self.skipped.append((self.relative(entry.path), LINK_LOOP))
                return None
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        self.skipped.append((self.relative(entry.path), NOT_REGULAR))
        return None

    def files(self, folder: str) -> list[str]:
        """Every file under `folder`, at any depth, as paths relative to the dataset folder.

        A loop over a stack, not recursion: a folder nested deeper than Python's recursion limit (1,000) is
        listed too, never a RecursionError. Each folder carries the real paths of the folders above it, which
        a link must not lead back to.
        """
        found = []
        pending = [(folder, frozenset[str]())]
        while pending:
            current, above = pending.pop()
            visited = above | {os.path.realpath(current)}
            for entry in self.entries(current):
                kind = self.kind(entry, set(visited))
                if kind == "dir":
                    pending.append((entry.path, visited))
                elif kind == "file":
                    found.append(self.relative(entry.path))
        return found

    def folders(self, folder: str) -> list[os.DirEntry]:
        """The visible sub-folders of `folder`; its loose files are recorded as outside any class."""
        result = []
        for entry in self.entries(folder):
            kind = self.kind(entry, {os.path.realpath(folder)})
            if kind == "dir":
                result.append(entry)
            elif kind == "file" and not (Path(folder) == self.root and entry.name == METADATA_FILE):
                self.skipped.append((self.relative(entry.path), OUTSIDE_CLASS))
        return result


def _nfc(name: str) -> str:
    # macOS writes file names decomposed (NFD); metadata.json is usually typed composed (NFC).
    return unicodedata.normalize("NFC", name)


def _check_class_names(split_folder: str, names: list[str]) -> None:
    unusable = [name for name in names if not _is_plain_text(name)]
    if unusable:
        raise DatasetError(
            f"{split_folder} has class folders whose names are not UTF-8 text or hold control characters: "
            f"{', '.join(repr(name) for name in unusable)}; rename them (a class name is shown in logs, tables, "
            "run.json and the service's answers)"
        )


def _is_plain_text(name: str) -> bool:
    # Names the file system gave as bytes of another encoding come as surrogates (os.fsdecode's escape).
    return not any(unicodedata.category(char) in ("Cc", "Cs") for char in name)


def _classes(root: Path, train_folders: list[str]) -> tuple[tuple[str, ...], str]:
    if not (root / METADATA_FILE).is_file():
        return tuple(sorted(train_folders)), "folder names"
    listed = load_classes(root)
    folders = {_nfc(name) for name in train_folders}
    not_listed = sorted(name for name in train_folders if _nfc(name) not in {_nfc(c) for c in listed})
    if not_listed:
        raise DatasetError(
            f"{root / METADATA_FILE} fixes the classes, but these class folders are not listed in it: "
            f"{', '.join(not_listed)} (add them to \"classes\", or move them out of the dataset folder)"
        )
    without_folder = [name for name in listed if _nfc(name) not in folders]
    if without_folder:
        raise DatasetError(
            f"{root / METADATA_FILE} lists classes that have no training folder: {', '.join(without_folder)}"
        )
    return listed, METADATA_FILE


def _class_files(walker: _Walker, split_folder: str, class_folders: list[os.DirEntry], classes, split):
    index = {_nfc(name): label for label, name in enumerate(classes)}
    files = []
    for entry in class_folders:
        label = index[_nfc(entry.name)]
        files.extend(FolderFile(path, label, split) for path in walker.files(entry.path))
    return files


def scan_folder(root: Path) -> FolderScan:
    """Find the layout, the classes and every candidate image file of the image folder `root`."""
    walker = _Walker(root)
    top = walker.folders(str(root))
    by_name = {entry.name.casefold(): entry for entry in top}
    for split_name in (TRAIN_FOLDER, *TEST_FOLDERS):
        same = [entry.name + "/" for entry in top if entry.name.casefold() == split_name]
        if len(same) > 1:  # one would be used and the other skipped: half the images gone, said in a count only
            raise DatasetError(
                f"{root} has {' and '.join(same)}: split folders are recognised in any case, so only one may exist; "
                "merge them"
            )
    train = by_name.get(TRAIN_FOLDER)
    tests = [by_name[name] for name in TEST_FOLDERS if name in by_name]
    if train is None and tests:
        raise DatasetError(f"{root} has {tests[0].name}/ but no train/ folder beside it: add train/<class>/...")
    if len(tests) > 1:
        raise DatasetError(
            f"{root} has {' and '.join(entry.name + '/' for entry in tests)}: only one test split is used; "
            "rename or move the other out of the dataset folder"
        )
    if train is None:
        split_folder, class_folders, layout = str(root), top, "class folders"
    else:
        for entry in top:
            if entry is not train and entry not in tests:
                walker.skipped.append((walker.relative(entry.path), NOT_SPLIT))
        split_folder, class_folders = train.path, walker.folders(train.path)
        layout = f"{train.name}/ + {tests[0].name}/" if tests else f"{train.name}/ split by --test_fraction"
    if not class_folders:
        raise DatasetError(f"{split_folder} has no class folder: put each class's images in <class>/ under it")
    _check_class_names(split_folder, [entry.name for entry in class_folders])
    classes, classes_from = _classes(root, [entry.name for entry in class_folders])
    split = TRAIN if tests else None
    files = _class_files(walker, split_folder, class_folders, classes, split)
    if tests:
        test_folders = walker.folders(tests[0].path)
        known = {_nfc(name) for name in classes}
        unknown = sorted(entry.name for entry in test_folders if _nfc(entry.name) not in known)
        if unknown:
            raise DatasetError(
                f"{tests[0].path} has class folders that {train.name}/ lacks: {', '.join(unknown)} (a model cannot "
                "learn a class it never sees in training; check the names' spelling and case)"
            )
        files += _class_files(walker, tests[0].path, test_folders, classes, TEST)
    empty = [name for label, name in enumerate(classes) if not any(f.label == label and f.split != TEST for f in files)]
    if empty:
        raise DatasetError(f"class folders without any file in {split_folder}: {', '.join(empty)}")
    return FolderScan(
        root=root,
        layout=layout,
        classes=classes,
        classes_from=classes_from,
        files=tuple(sorted(files, key=lambda file: file.path)),
        skipped=tuple(sorted(walker.skipped)),
        test_folder=tests[0].name if tests else None,
    )


# --- bad images -----------------------------------------------------------------------------------------


def bad_images_message(root: Path, bad: list[dict]) -> str:
    lines = "\n".join(f"  {shown_path(item['path'])}: {item['reason']}" for item in bad)
    return (
        f"{len(bad)} bad image(s) in {root}, found before training (fix or remove them, or train without "
        f"them with --skip_bad_images):\n{lines}"
    )
