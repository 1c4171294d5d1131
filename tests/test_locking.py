"""The package's two ways to take a flock, from one module: waiting for a lock file, or asking for a directory."""

import errno
import fcntl
import logging
import os
import threading

import pytest

from image_classifier import locking
from image_classifier.locking import exclusive_lock, is_locked, lock_directory


def _cannot_lock(fd, operation):
    # What NFS mounted without a lock manager answers; no such mount can be made here.
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def test_a_waiting_locker_is_told_once_and_gets_the_lock_when_it_is_let_go(tmp_path):
    lock_file, told = tmp_path / "registry.json.lock", []
    # flock excludes other open files, in this process too: a second open() stands for a second process.
    holder = lock_file.open("a")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    release = threading.Timer(0.2, holder.close)
    release.start()
    try:
        with exclusive_lock(lock_file, on_wait=lambda: told.append(1)):
            assert holder.closed
    finally:
        release.join()
    assert told == [1]
    with exclusive_lock(lock_file, on_wait=lambda: told.append(2)):  # free: nobody is told anything
        pass
    assert told == [1]


def test_a_held_directory_is_refused_after_the_retry_and_seen_as_held(tmp_path, monkeypatch):
    monkeypatch.setattr(locking, "LOCK_RETRY_SECONDS", 0.05)
    held = lock_directory(tmp_path)
    assert held is not None and held.fd is not None
    assert lock_directory(tmp_path) is None
    assert is_locked(tmp_path)
    held.release()
    assert not is_locked(tmp_path)
    again = lock_directory(tmp_path)
    assert again is not None
    again.release()


def test_where_flock_fails_the_directory_runs_unlocked_but_a_lock_file_refuses(tmp_path, monkeypatch, caplog):
    """A run directory goes on unlocked with a warning (a run on such a mount worked before locks came); a lock
    file's writer (the registry, prepared images) cannot go on without exclusion and raises."""
    monkeypatch.setattr(fcntl, "flock", _cannot_lock)
    with caplog.at_level(logging.WARNING):
        unlocked = lock_directory(tmp_path)
    assert unlocked is not None and unlocked.fd is None
    assert "does not support flock" in caplog.text
    assert not is_locked(tmp_path)
    with pytest.raises(OSError) as refused, exclusive_lock(tmp_path / "x.lock"):
        pass
    assert refused.value.errno == errno.ENOLCK
