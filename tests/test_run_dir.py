import errno
import fcntl
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classifier import file_systems, locking
from image_classifier import run_dir as run_dir_module
from image_classifier import trainer
from image_classifier.errors import RunDirectoryError
from image_classifier.file_systems import file_system_type, is_network_file_system
from image_classifier.locking import is_locked
from image_classifier.main import main
from image_classifier.run_dir import CHECKPOINT_FILE, STAGING_MARKER, RunDirectory, sha256_of
from tests.conftest import PASSWORD, trainer_args


def test_work_happens_in_a_sibling_published_by_one_rename(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.check_can_start()
    run_dir.create({"step": 0}, {"a": 1})
    assert sorted(p.name for p in run_dir.work_dir.iterdir()) == [CHECKPOINT_FILE, "run.json"]
    run_dir.save_checkpoint({"step": 3})
    assert run_dir.load_checkpoint() == {"step": 3}
    digest = run_dir.save_model({"w": torch.ones(2)})
    assert not run_dir.final_dir.exists()
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["r.incomplete"]

    assert run_dir.finish() == tmp_path / "e" / "r"
    assert sorted(p.name for p in run_dir.final_dir.iterdir()) == ["model.pth", "run.json"]
    assert sha256_of(run_dir.final_dir / "model.pth") == digest
    assert not run_dir.work_dir.exists()


def test_refusals(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        run_dir.open_for_resume()
    run_dir.create({"step": 0}, {})
    other = RunDirectory(tmp_path / "e" / "r")
    # The creator holds the lock: a second process (or object) can neither start nor resume the run.
    with pytest.raises(RunDirectoryError, match="another process is running"):
        other.check_can_start()
    with pytest.raises(RunDirectoryError, match="another process is running"):
        other.open_for_resume()
    run_dir.final_dir.mkdir()
    with pytest.raises(RunDirectoryError, match="already exists"):
        other.check_can_start()
    with pytest.raises(RunDirectoryError, match="is complete"):
        other.open_for_resume()


def test_an_unlocked_unfinished_run_is_offered_for_resume_and_locked_by_it(tmp_path):
    # A first process creates the run and exits: its lock goes with it.
    create = "import sys; from pathlib import Path; from image_classifier.run_dir import RunDirectory; "
    create += "RunDirectory(Path(sys.argv[1])).create({'step': 5}, {})"
    subprocess.run([sys.executable, "-c", create, str(tmp_path / "e" / "r")], check=True)
    resumer = RunDirectory(tmp_path / "e" / "r")
    assert not is_locked(resumer.work_dir)
    with pytest.raises(RunDirectoryError, match="unfinished run exists .*--resume"):
        resumer.check_can_start()
    assert resumer.open_for_resume() == {"step": 5}
    assert is_locked(resumer.work_dir)


@pytest.mark.parametrize("content", [[1, 2], torch.zeros(2), "text"])
def test_a_checkpoint_file_that_holds_no_checkpoint_is_refused_and_the_run_let_go(tmp_path, content):
    # Replaced from outside by something torch.load reads (weights_only allows lists, tensors, strings): the
    # resume checks ask it `.get(...)`, which would end in a traceback instead of an `error:` line.
    resumer = RunDirectory(tmp_path / "e" / "r")
    resumer.create({"step": 5}, {})
    resumer.release()
    torch.save(content, resumer.work_dir / CHECKPOINT_FILE)
    with pytest.raises(RunDirectoryError, match="does not hold a checkpoint"):
        resumer.open_for_resume()
    assert not is_locked(resumer.work_dir)


def test_a_resume_removes_what_a_killed_writer_left_even_under_a_pid_that_lives_here(tmp_path):
    # A trainer killed inside a write in its container (pid 1 there) leaves `.metrics.json.1.tmp`; resumed in
    # another container, pid 1 is somebody else, so "is that process alive?" cannot tell. The run's lock can:
    # whoever holds it is the run's only writer, and every temporary in its folder is a dead writer's.
    create = "import sys; from pathlib import Path; from image_classifier.run_dir import RunDirectory; "
    create += "RunDirectory(Path(sys.argv[1])).create({'step': 5}, {})"
    subprocess.run([sys.executable, "-c", create, str(tmp_path / "e" / "r")], check=True)
    resumer = RunDirectory(tmp_path / "e" / "r")
    for leftover in (".metrics.json.1.tmp", ".checkpoint.pt.tmp"):
        (resumer.work_dir / leftover).write_text("half")
    resumer.open_for_resume()
    resumer.write_json("metrics.json", {})
    published = resumer.finish()
    assert sorted(path.name for path in published.iterdir()) == ["metrics.json", "run.json"]


def test_abandoned_staging_directories_are_cleaned_and_never_block(tmp_path):
    experiment = tmp_path / "e"
    abandoned = experiment / f"r{STAGING_MARKER}12345"
    abandoned.mkdir(parents=True)
    (abandoned / CHECKPOINT_FILE).write_bytes(b"half")
    run_dir = RunDirectory(experiment / "r")
    run_dir.check_can_start()
    run_dir.create({"step": 0}, {})
    assert sorted(p.name for p in experiment.iterdir()) == ["r.incomplete"]


def test_model_bytes_depend_only_on_the_weights(tmp_path):
    digests = set()
    for name in ("a", "b"):
        run_dir = RunDirectory(tmp_path / name / "r")
        run_dir.create({}, {})
        digests.add(run_dir.save_model({"w": torch.arange(4.0)}))
    assert len(digests) == 1


def test_a_link_planted_at_model_pth_is_not_written_through(tmp_path):
    # model.pth is written under its final name (its zip embeds it): a symbolic link left there must not
    # make the trainer overwrite the file it points to, nor be published as the run's model.
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir.work_dir / "model.pth").symlink_to(victim)
    digest = run_dir.save_model({"w": torch.arange(4.0)})
    assert victim.read_text() == "precious"
    assert not (run_dir.work_dir / "model.pth").is_symlink()
    assert digest == sha256_of(run_dir.work_dir / "model.pth")
    run_dir.release()


def test_checkpoint_bytes_do_not_depend_on_the_process_id(tmp_path, monkeypatch):
    # torch.save embeds the name of the file it writes in the archive: a temporary named after the process
    # would make two identical runs' checkpoints differ (item 5 of issue 17: no byte of a run changes).
    checkpoints = []
    for pid in (7, 123456):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        run_dir = RunDirectory(tmp_path / str(pid) / "r")
        run_dir.create({"w": torch.arange(4.0)}, {})
        run_dir.save_checkpoint({"w": torch.arange(4.0)})
        checkpoints.append((run_dir.work_dir / CHECKPOINT_FILE).read_bytes())
        run_dir.release()
    assert checkpoints[0] == checkpoints[1]
    # The archive's folder is the one versions before the refactor wrote, whatever the process.
    assert b".checkpoint.pt/data.pkl" in checkpoints[0]
    assert sorted(path.name for path in run_dir.work_dir.iterdir()) == [CHECKPOINT_FILE, "run.json"]


def test_a_link_planted_at_the_checkpoints_fixed_temporary_name_is_not_written_through(tmp_path):
    # `.checkpoint.pt.tmp` is a name anyone who can write into the run folder (a shared experiments folder)
    # knows in advance: a symbolic link left there must not make the trainer overwrite the file it points to,
    # nor become the run's checkpoint.
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({"step": 1}, {})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir.work_dir / f".{CHECKPOINT_FILE}.tmp").symlink_to(victim)
    run_dir.save_checkpoint({"step": 2})
    assert victim.read_text() == "precious"
    assert not (run_dir.work_dir / CHECKPOINT_FILE).is_symlink()
    assert torch.load(run_dir.work_dir / CHECKPOINT_FILE, weights_only=True) == {"step": 2}
    run_dir.release()


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_and_no_temporary(tmp_path, monkeypatch):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({"step": 1}, {})
    save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        save(obj, path, *args, **kwargs)
        os.truncate(path, 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_dir.save_checkpoint({"step": 2})
    assert sorted(path.name for path in run_dir.work_dir.iterdir()) == [CHECKPOINT_FILE, "run.json"]
    assert torch.load(run_dir.work_dir / CHECKPOINT_FILE, weights_only=True) == {"step": 1}
    run_dir.release()


def test_json_is_strict_non_finite_numbers_become_null_with_a_warning(tmp_path, caplog):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    run_dir.write_json("metrics.json", {"loss": math.nan, "history": [{"train_loss": math.inf, "ok": 1.5}]})
    text = (run_dir.work_dir / "metrics.json").read_text()
    assert json.loads(text) == {"loss": None, "history": [{"train_loss": None, "ok": 1.5}]}
    assert "NaN" not in text and "Infinity" not in text
    assert "loss (nan)" in caplog.text and "history[0].train_loss (inf)" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to hold GPU tensors")
def test_a_gpu_model_is_saved_with_cpu_tensors(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    run_dir.save_model({"w": torch.ones(3, device="cuda")})
    saved = torch.load(run_dir.work_dir / "model.pth", weights_only=True)  # no map_location: as stored
    assert saved["w"].device.type == "cpu"


def test_every_output_reaches_the_disk_before_the_run_is_published(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    monkeypatch.setattr(os, "fsync", recording_fsync)
    run_dir.save_model({"w": torch.ones(2)})
    run_dir.write_json("metrics.json", {})
    run_dir.finish()
    # model.pth itself (a power cut after the rename must not leave it empty), the folder, then its parent.
    assert synced == ["model.pth", f".metrics.json.{os.getpid()}.tmp", "r.incomplete", "e"]


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_lock_lasts_as_long_as_the_run_and_no_descriptor_leaks(tmp_path):
    before = _open_descriptors()
    for index in range(5):
        with RunDirectory(tmp_path / "e" / f"r{index}") as run_dir:
            run_dir.check_can_start()
            run_dir.create({"step": 0}, {})
            assert is_locked(run_dir.work_dir)
            run_dir.finish()
        assert not is_locked(run_dir.final_dir)
    with pytest.raises(RuntimeError, match="the run failed"):
        with RunDirectory(tmp_path / "e" / "failed") as run_dir:
            run_dir.create({"step": 1}, {})
            raise RuntimeError("the run failed")
    assert not is_locked(run_dir.work_dir)
    # The same process tries again: nothing of the failed attempt holds the run.
    with RunDirectory(tmp_path / "e" / "failed") as retry:
        assert retry.open_for_resume() == {"step": 1}
        assert retry.open_for_resume() == {"step": 1}  # twice on one object: still one descriptor
        retry.finish()
    assert _open_descriptors() == before


def test_a_failed_run_is_resumed_by_the_same_process_and_no_run_leaks_a_descriptor(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    experiments = tmp_path / "experiments"
    assert main(trainer_args(dataset, experiments, "warm-up", "--batch_size", "50")) == 0  # torch's own files
    before = _open_descriptors()

    evaluate, calls = trainer.evaluate, []

    def failing_once(*args, **options):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a failure in the middle of the run")
        return evaluate(*args, **options)

    monkeypatch.setattr(trainer, "evaluate", failing_once)
    args = trainer_args(dataset, experiments, "r", "--batch_size", "50")
    with pytest.raises(RuntimeError, match="middle of the run"):
        main(args)
    assert json.loads((experiments / "e" / "r.incomplete" / "run.json").read_text())["status"] == "failed"
    assert main([*args, "--resume"]) == 0
    assert main(trainer_args(dataset, experiments, "another", "--batch_size", "50")) == 0
    assert sorted(p.name for p in (experiments / "e").iterdir()) == ["another", "r", "warm-up"]
    assert _open_descriptors() == before


def test_a_start_that_cannot_write_leaves_nothing_and_holds_nothing(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    with pytest.raises(TypeError):
        run_dir.create({}, {"not json": object()})
    assert list((tmp_path / "e").iterdir()) == []
    with RunDirectory(tmp_path / "e" / "r") as again:
        again.create({}, {})
        again.finish()


@pytest.mark.parametrize(
    "kind, network",
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("fuse.sshfs", True),
        ("fuse.s3fs", True),
        ("9p", True),
        ("ext4", False),
        ("xfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("fuseblk", False),
        ("fuse.fuse-overlayfs", False),
        (None, False),
    ],
)
def test_network_file_systems(kind, network):
    assert is_network_file_system(kind) is network


def _mount_table(tmp_path: Path, kind: str) -> Path:
    """A mount table in /proc/self/mountinfo's format in which tmp_path's device is mounted as `kind`."""
    device = os.stat(tmp_path).st_dev
    table = tmp_path / "mountinfo"
    table.write_text(
        "1 0 253:7 / / rw,relatime - ext4 /dev/vda1 rw\n"
        f"42 1 {os.major(device)}:{os.minor(device)} /export /mnt/shared rw,relatime shared:7 master:2 - {kind} "
        "server:/export rw,vers=4.2\n"
    )
    return table


def test_the_file_system_type_comes_from_the_mount_table(tmp_path):
    assert file_system_type(tmp_path, _mount_table(tmp_path, "nfs4")) == "nfs4"
    assert file_system_type(tmp_path, tmp_path / "no-such-table") is None
    # On this machine, the real table knows the file system of every existing path.
    real = file_system_type(tmp_path)
    assert real is not None and not is_network_file_system(real)


def test_a_run_on_a_network_file_system_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(file_systems, "MOUNT_INFO", _mount_table(tmp_path, "nfs4"))
    with caplog.at_level(logging.WARNING), RunDirectory(tmp_path / "e" / "r") as run_dir:
        run_dir.create({}, {})
    assert "is on a network file system (nfs4)" in caplog.text and "two machines" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), RunDirectory(tmp_path / "e" / "r") as run_dir:
        run_dir.open_for_resume()
    assert "is on a network file system (nfs4)" in caplog.text


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    # What NFS mounted without a lock manager answers (ENOLCK); no such mount can be made here.
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), RunDirectory(tmp_path / "e" / "r") as run_dir:
        run_dir.create({"step": 2}, {})
        assert not is_locked(run_dir.work_dir)
        run_dir.finish()
    assert "does not support flock" in caplog.text


def test_a_second_start_removing_our_staging_before_we_lock_it_is_one_clear_error(tmp_path, monkeypatch):
    """Two starts of the same run: the second one's clean-up of abandoned staging folders runs between our
    mkdir and our lock, sees an unlocked staging folder and removes it (its real code, with its own lock)."""
    run_dir = RunDirectory(tmp_path / "e" / "r")
    real_lock = run_dir_module.lock_directory

    def other_start_cleans_up_first(directory):
        monkeypatch.setattr(run_dir_module, "lock_directory", real_lock)  # the other start locks for real
        RunDirectory(tmp_path / "e" / "r")._remove_abandoned_staging()
        return real_lock(directory)

    monkeypatch.setattr(run_dir_module, "lock_directory", other_start_cleans_up_first)
    with pytest.raises(RunDirectoryError, match="another process started .* at the same time"):
        run_dir.create({"step": 0}, {})
    assert list((tmp_path / "e").iterdir()) == []
    with RunDirectory(tmp_path / "e" / "r") as again:  # and the run can be started
        again.create({"step": 0}, {})
        again.finish()


def test_a_run_held_by_a_process_that_proc_locks_leaves_out_is_still_running(tmp_path, monkeypatch):
    """/proc/locks lists only the locks of processes its pid namespace can see: `runs list` in one container
    sees an empty table while a trainer in another holds the run. The run is running, not "killed"."""
    empty = tmp_path / "locks"
    empty.write_text("")  # /proc/locks as read from another pid namespace
    monkeypatch.setattr(locking, "PROC_LOCKS", empty)
    with RunDirectory(tmp_path / "e" / "r") as run_dir:
        run_dir.create({"step": 0}, {})
        assert is_locked(run_dir.work_dir)
    assert not is_locked(run_dir.work_dir)


def test_a_run_held_from_another_pid_namespace_is_seen_as_running(tmp_path):
    """The same with real namespaces: the lock is held here, asked about from a new pid namespace with its
    own /proc (as `docker run` gives), where /proc/locks does not list it."""
    ask = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from image_classifier.locking import "
        "is_locked; print(is_locked(Path(sys.argv[1])))",
    ]
    namespace = ["unshare", "--pid", "--fork", "--mount-proc"]
    if subprocess.run([*namespace, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a pid namespace here (needs root or user namespaces)")
    with RunDirectory(tmp_path / "e" / "r") as run_dir:
        run_dir.create({"step": 0}, {})
        hidden = subprocess.run([*namespace, "grep", "-c", "FLOCK", "/proc/locks"], capture_output=True, text=True)
        assert hidden.stdout.strip() == "0"  # the kernel's table there leaves our lock out
        answer = subprocess.run([*namespace, *ask, str(run_dir.work_dir)], capture_output=True, text=True)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == "True"


@pytest.mark.parametrize(
    "status, holder, removed", [("completed", False, True), ("running", False, False), ("completed", True, False)]
)
def test_the_spare_checkpoint_of_a_run_killed_after_publishing_goes_with_the_next_attempt(
    tmp_path, status, holder, removed
):
    # What finish() leaves when killed between its rename and the checkpoint's removal.
    final = tmp_path / "e" / "r"
    final.mkdir(parents=True)
    (final / "run.json").write_text(json.dumps({"status": status}))
    (final / CHECKPOINT_FILE).write_bytes(b"spare")
    holding = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
    if holder:  # the publisher itself, still alive between its rename and the removal
        fcntl.flock(holding, fcntl.LOCK_EX)
    try:
        for attempt in (RunDirectory(final).check_can_start, RunDirectory(final).open_for_resume):
            with pytest.raises(RunDirectoryError, match="already exists|is complete"):
                attempt()
            assert (final / CHECKPOINT_FILE).exists() is not removed
    finally:
        os.close(holding)
