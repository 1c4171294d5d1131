"""Headless Chromium driven over the DevTools protocol through a pipe (--remote-debugging-pipe): a real
browser for the tests, without a driver package or a websocket client. Debian's `chromium` package."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time


def chromium_path() -> str | None:
    # Debian's package, or the Chrome that GitHub's Ubuntu runners ship (the tests workflow has no apt step).
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _high(*fds: int) -> tuple[int, ...]:
    """The same pipe ends as fds from 10 up, so that moving them to 3 and 4 in the child never closes one."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved


class Chromium:
    """One headless browser; `evaluate` runs JavaScript in a page (awaiting a promise) and returns its value."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        commands_read, self._commands = _high(*os.pipe())
        self._events, events_write = _high(*os.pipe())

        # DevTools reads commands from fd 3 and writes to fd 4: bash puts the pipe's ends there (sh would
        # refuse fds of two digits).
        wiring = f'exec "$0" "$@" 3<&{commands_read} 4>&{events_write} {commands_read}<&- {events_write}>&-'
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                wiring,
                executable,
                "--headless=new",
                "--no-sandbox",  # tests run as root here
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(commands_read, events_write),
            start_new_session=True,  # its own process group: close() stops the renderers and zygotes too
        )
        os.close(commands_read)
        os.close(events_write)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=self._session, url=url)

    def evaluate(self, script: str, timeout: float = 120):
        """The value of `script`, an expression (a promise is awaited), within `timeout` seconds."""
        result = self.call(
            "Runtime.evaluate",
            session=self._session,
            expression=script,
            awaitPromise=True,
            returnByValue=True,
            timeout=int(timeout * 1000),
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"the page's script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _read(self) -> dict:
        deadline = time.monotonic() + 300
        while b"\0" not in self._buffer:
            assert self.process.poll() is None, f"chromium exited with {self.process.returncode}"
            assert time.monotonic() < deadline, "chromium did not answer"
            chunk = os.read(self._events, 1 << 16)
            if not chunk:
                raise AssertionError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        """Stops the browser and every process it started, then removes its profile.

        Killing only the main process left its helpers writing into the profile while it was removed
        ("Directory not empty" in CI): the whole group is stopped and waited for first.
        """
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        except (AssertionError, OSError, RuntimeError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        os.close(self._commands)
        os.close(self._events)
        _wait_until_group_is_gone(self.process.pid)
        # A helper that outlived the group's wait may leave a file behind: a stray temporary folder is no
        # reason to fail the test.
        shutil.rmtree(self._profile, ignore_errors=True)


def _wait_until_group_is_gone(group: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
