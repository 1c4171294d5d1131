import json
import math
import os
import subprocess
import sys

import pytest

from image_classifier.durable_files import finite_json, replace_atomically, strict_json, write_json_atomically


def test_finite_json_leaves_finite_values_alone():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": -0.0}}
    assert finite_json(value) == (value, [])


def test_strict_json_writes_nan_and_infinities_as_null_and_says_where():
    text, replaced = strict_json({"loss": math.nan, "history": [{"train": -math.inf}]})
    assert json.loads(text) == {"loss": None, "history": [{"train": None}]}
    assert replaced == ["loss (nan)", "history[0].train (-inf)"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "registry.json"
    write_json_atomically(target, {"version": 1})

    def half_write(temporary):
        temporary.write_text('{"vers')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, half_write)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["registry.json"]


def test_a_dead_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "run.json"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".run.json.{int(ended.stdout)}.tmp"
    dead.write_text("half")
    alive = tmp_path / f".run.json.{os.getppid()}.tmp"  # our parent: a process that is there
    alive.write_text("another writer's")
    write_json_atomically(target, {"a": 1})
    assert not dead.exists() and alive.exists()
    assert json.loads(target.read_text()) == {"a": 1}


@pytest.mark.parametrize("number", [str(2**31), "9" * 40])
def test_a_temporary_named_for_a_process_id_no_system_has_is_removed_not_a_crash(tmp_path, number):
    # os.kill raises OverflowError for such a number: a stray file must not stop every write in its folder.
    stray = tmp_path / f".registry.json.{number}.tmp"
    stray.write_text("not ours")
    write_json_atomically(tmp_path / "registry.json", {"a": 1})
    assert not stray.exists()
    assert json.loads((tmp_path / "registry.json").read_text()) == {"a": 1}


def test_a_leftover_that_cannot_be_removed_does_not_stop_the_write(tmp_path):
    # Removing dead writers' leftovers is housekeeping: one that cannot go (here a folder under that name;
    # in a shared folder, another user's file) must not fail the write itself.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stuck = tmp_path / f".run.json.{int(ended.stdout)}.tmp"
    stuck.mkdir()
    write_json_atomically(tmp_path / "run.json", {"a": 1})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}


def test_a_link_planted_at_this_processs_temporary_name_is_not_written_through(tmp_path):
    # The temporary's name is the target's and the writer's process id, which `ps` shows: a symbolic link
    # left there (a shared folder) must not make the write overwrite the file it points to.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / f".registry.json.{os.getpid()}.tmp").symlink_to(victim)
    write_json_atomically(tmp_path / "registry.json", {"a": 1})
    assert victim.read_text() == "precious"
    assert not (tmp_path / "registry.json").is_symlink()
    assert json.loads((tmp_path / "registry.json").read_text()) == {"a": 1}
