"""Tie Prefect's temporary API server to the segflow process that started it.

Without a Prefect server to talk to, Prefect 3 starts one as a child process (`python -m uvicorn ...
prefect.server.api.server:create_app`, SubprocessASGIServer) and stops it from an atexit hook. A SIGKILL,
an OOM kill or a scheduler's timeout runs no atexit hook, so the server (~200 MB) lived on as an orphan.

Here every such server gets a watchdog: a small stdlib-only Python process (this file run as a script,
`python -I -S prefect_server.py <parent pid> <server pid>`) that sleeps until either process ends. When the
server ends first (a normal exit), it exits too; when the parent ends first, it sends the server SIGTERM,
and SIGKILL after GRACE_SECONDS. A thread in our own process could not do this (it dies with the process),
and a parent-death signal (PR_SET_PDEATHSIG) fires when the *thread* that started the child exits, and
Prefect may start the server from a short-lived worker thread.

`guard_ephemeral_server()` installs it (and drops Prefect's "Stopping temporary server" notice, logged at exit
after segflow's last line): it wraps SubprocessASGIServer._run_uvicorn_command when Prefect's server module
is imported (an import hook, because importing that module costs ~2 s and a run that talks
to `segflow ui` or a configured PREFECT_API_URL never imports it). Known gap: a kill in the instant
between the server's start and its watchdog's start still leaves the server.

Imports are stdlib only: the watchdog runs this file with `-I -S`, outside segflow's environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import select
import signal
import subprocess
import sys
import time

SERVER_MODULE = "prefect.server.api.server"
GRACE_SECONDS = 5.0  # SIGTERM lets the server close its SQLite database; then SIGKILL
_POLL_SECONDS = 0.5  # only where pidfd_open is missing (Linux < 5.3): how often the watchdog looks


def guard_ephemeral_server() -> None:
    """Give every temporary Prefect server this process starts from now on a watchdog (idempotent)."""
    module = sys.modules.get(SERVER_MODULE)
    if module is not None:
        _patch(module)
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def start_watchdog(server_pid: int) -> subprocess.Popen:
    """Start the watchdog of `server_pid` for this process."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), str(server_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _patch(module) -> None:
    cls = module.SubprocessASGIServer
    original = cls._run_uvicorn_command
    if getattr(original, "_segflow_watched", False):
        return

    def _run_uvicorn_command(self):
        proc = original(self)
        start_watchdog(proc.pid)
        return proc

    _run_uvicorn_command._segflow_watched = True
    cls._run_uvicorn_command = _run_uvicorn_command
    logger = getattr(module, "subprocess_server_logger", None)
    if isinstance(logger, logging.Logger):
        logger.addFilter(_drop_stop_notice)


def _drop_stop_notice(record: logging.LogRecord) -> bool:
    """Prefect logs "Stopping temporary server on <url>" from an atexit hook, after everything else: it
    would push a failed command's `error: ...` line off the last line of its output."""
    return not str(record.msg).startswith("Stopping temporary server")


class _PatchingLoader(importlib.abc.Loader):
    """Prefect's own loader for the server module, then `_patch` on the executed module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name):  # get_source, get_filename, ...: inspect and linecache use them
        return getattr(self._loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for SERVER_MODULE it wraps the loader the other finders return, once."""

    def find_spec(self, name, path=None, target=None):
        if name != SERVER_MODULE:
            return None
        sys.meta_path.remove(self)  # once; and so that find_spec below asks the other finders
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


# --- the watchdog process ---------------------------------------------------------------------------


def _pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (readable once it exits), None where the kernel lacks pidfd_open; -1 if it is gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except (AttributeError, OSError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its new parent) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_either(parent: int, server: int, server_fd: int | None) -> str:
    """Block until the parent or the server ends; return which ("parent" or "server")."""
    parent_fd = _pidfd(parent)
    if os.getppid() != parent or parent_fd == -1:  # reparented: the parent died before we looked
        return "parent"
    if parent_fd is not None and server_fd is not None:
        ready, _, _ = select.select([parent_fd, server_fd], [], [])
        return "server" if server_fd in ready else "parent"
    while True:  # no pidfds: poll
        if os.getppid() != parent:
            return "parent"
        if not _alive(server):
            return "server"
        time.sleep(_POLL_SECONDS)


def _signal(server: int, server_fd: int | None, sig: int) -> None:
    try:
        if server_fd is not None:  # by pidfd: never a stranger that reused the pid
            signal.pidfd_send_signal(server_fd, sig)
        else:
            os.kill(server, sig)
    except (ProcessLookupError, OSError):
        pass


def watch(parent: int, server: int) -> None:
    """Stop `server` (SIGTERM, then SIGKILL after GRACE_SECONDS) once `parent` has exited; return when
    `server` exits on its own."""
    # The terminal's Ctrl-C or hangup reaches the whole process group; the watchdog stays to do its job.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    server_fd = _pidfd(server)
    if server_fd == -1:
        return
    if _wait_either(parent, server, server_fd) == "server":
        return
    _signal(server, server_fd, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        if server_fd is not None:
            if select.select([server_fd], [], [], deadline - time.monotonic())[0]:
                return
        elif not _alive(server):
            return
        else:
            time.sleep(0.1)
    _signal(server, server_fd, signal.SIGKILL)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
