"""Serving processes: N copies of the service on one port, because one process's GIL holds it below the cores.

On the 2-core box one process keeps ~1.6 cores busy at saturation: its event loop (HTTP, JSON, tokenizing) and
its model workers take turns at one GIL. Two processes with one model worker each keep ~1.95 busy and answer
18-48 % more (docs/benchmarks.md, "Serving processes and precision").

The process the operator starts is the *primary*. It serves like the others and starts the *secondaries*. On the CPU
it forks them once its code is imported and its model loaded (on one torch thread), before any thread pool or event
loop runs: they share those pages copy-on-write (`import torch` alone is ~140 MiB of anonymous memory per process),
so a group of two holds far less than twice one process's memory. A secondary restarted later, when the primary runs
threads, is spawned instead (the same command with `--group FD:PID`, loading everything itself), as are secondaries
on CUDA, where a fork must not follow the runtime's start. Every process binds its own SO_REUSEPORT socket, so the
kernel spreads connections over them; the primary first checks that nothing else holds the port, which SO_REUSEPORT
alone would not report.

The primary is the group's one address for signals. It forwards SIGTERM / SIGINT (drain) and SIGHUP (reload),
restarts a secondary that dies while serving, and waits for all of them before it exits. Secondaries run in their
own session, so a terminal's Ctrl-C reaches the primary only and no process sees a signal twice (uvicorn reads a
second one as "force exit"); a secondary whose primary is gone drains by itself. A reload asked of one process over
HTTP reaches the others through a pipe to the primary. Counters and histograms are shared through
prometheus_client's multiprocess files (app/metrics.py), so /metrics answers for the group whichever process takes
the scrape.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import torch

from app.config import Settings
from app.metrics import process_died, share_across_processes
from contract.device import available_cores

logger = logging.getLogger("app")

AUTO_PROCESSES = 2  # the count measured (2-core box); more cores get more model workers per process instead
RESTART_DELAY_S = (1.0, 30.0)  # a dead secondary is restarted after 1 s, doubling up to 30 s while it keeps dying
STABLE_S = 60.0  # a secondary that lived this long resets the delay


def resolve(setting: int, device: torch.device, cores: int | None = None) -> int:
    """The process count for `SENTIMENT_PROCESSES` (0 = auto): 1 on CUDA (one GPU queue batches best), else up to 2."""
    if setting:
        return setting
    if device.type != "cpu":
        return 1
    return max(1, min(cores if cores is not None else available_cores(), AUTO_PROCESSES))


def share(settings: Settings, processes: int) -> Settings:
    """One process's settings: the count resolved (its share of the cores follows from it, app/runner.py).

    The limits (max_in_flight, max_connections, max_queue...) stay per process, as its memory and descriptors are:
    the kernel spreads connections over the processes by a hash, not by load, so a total split evenly would refuse
    work in one process while the other has room.
    """
    return settings.model_copy(update={"processes": processes})


@contextlib.contextmanager
def one_torch_thread(active: bool) -> Iterator[None]:
    """Run the block on one torch thread when `active`: a model load before a fork must not start torch's thread pool,
    which a forked child would inherit without its threads (and hang in its first parallel region)."""
    if not active:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bind(host: str, port: int, *, check_free: bool) -> socket.socket:
    """A SO_REUSEPORT socket bound to (host, port); `check_free` first proves no other server listens there.

    Bound, not listening: uvicorn listens once the app has started, so no connection waits on a process still loading.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if check_free and port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # without SO_REUSEPORT: EADDRINUSE if anyone listens
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Forked:
    """A forked secondary behind the part of `subprocess.Popen`'s interface the primary uses for spawned ones."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Primary:
    """The primary's side: start, signal, restart and wait for the secondaries; fan reloads out."""

    def __init__(self, count: int, host: str, port: int) -> None:
        self.count = count
        self._command = [sys.executable, "-m", "app.main", "--host", host, "--port", str(port)]
        self.reload_self: Callable[[], None] = lambda: None  # the primary's own Service.reload_soon, once the app exists
        self._metrics_dir = tempfile.mkdtemp(prefix="sentiment-metrics-")
        share_across_processes(self._metrics_dir)  # before the app builds its collectors; secondaries inherit it
        self._pipe_r, self._pipe_w = os.pipe()  # secondaries write their pid here to reload the group
        os.set_blocking(self._pipe_r, False)
        self._children: dict[int, subprocess.Popen[bytes] | Forked | None] = {}  # index -> process (None: waiting to restart)
        self._started: dict[int, float] = {}
        self._restart_at: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self.stopping = False

    def fork(self, host: str, port: int) -> tuple[Secondary, socket.socket] | None:
        """Fork the secondaries if this process may: on the CPU, with no Python thread but this one and no torch thread
        pool started (the caller's duty: `one_torch_thread`). Returns (the group, a socket of its own) in each child,
        None here. numpy's OpenBLAS thread, the one native thread `import torch` starts, is shut down and restarted
        around the fork by OpenBLAS itself."""
        if threading.active_count() > 1:
            return None
        gc.freeze()  # the imported objects stay out of the collector's scans, which would dirty their shared pages
        for index in range(1, self.count):
            pid = os.fork()
            if pid == 0:
                os.setsid()  # as a spawned secondary: Ctrl-C in the terminal reaches the primary only
                os.close(self._pipe_r)
                return Secondary(f"{self._pipe_w}:{os.getppid()}"), bind(host, port, check_free=False)
            self._children[index], self._started[index] = Forked(pid), time.monotonic()
            logger.info("secondary %d forked (pid %d)", index, pid)
        return None

    def start(self) -> None:
        """Spawn the secondaries `fork` did not start."""
        for index in range(1, self.count):
            if index not in self._children:
                self._spawn(index)

    def _spawn(self, index: int) -> None:
        group = f"{self._pipe_w}:{os.getpid()}"  # the pipe, and whom to outlive no longer
        child = subprocess.Popen([*self._command, "--group", group], pass_fds=(self._pipe_w,), start_new_session=True)
        self._children[index], self._started[index] = child, time.monotonic()
        logger.info("secondary %d started (pid %d)", index, child.pid)

    def signal(self, sig: int) -> None:
        """Forward `sig` to every live secondary; SIGTERM and SIGINT also stop restarts."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        self._send(sig)

    def reload_others(self, origin: int | None = None) -> None:
        """SIGHUP every secondary but `origin` (the pid that reloaded itself and asked)."""
        self._send(signal.SIGHUP, but=origin)

    def _send(self, sig: int, but: int | None = None) -> None:
        for child in self._children.values():
            if child is not None and child.pid != but and child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(sig)

    def tick(self) -> bool:
        """From the server's tick (10 Hz): reloads asked through the pipe, and dead secondaries; False: keep serving."""
        with contextlib.suppress(BlockingIOError):
            for line in os.read(self._pipe_r, 4096).split():
                self.reload_self()
                self.reload_others(origin=int(line))
        now = time.monotonic()
        for index, child in list(self._children.items()):
            if child is None:
                if not self.stopping and now >= self._restart_at[index]:
                    self._spawn(index)
            elif child.poll() is not None:
                self._died(index, child, now)
        return False

    def _died(self, index: int, child: subprocess.Popen[bytes] | Forked, now: float) -> None:
        process_died(child.pid)
        self._children[index] = None
        if self.stopping:
            return
        lived = now - self._started[index]
        delay = RESTART_DELAY_S[0] if lived >= STABLE_S else min(2 * self._delay.get(index, RESTART_DELAY_S[0] / 2), RESTART_DELAY_S[1])
        self._delay[index], self._restart_at[index] = delay, now + delay
        logger.error(
            "secondary %d (pid %d) exited with %s after %.1f s; restarting in %.0f s", index, child.pid, child.returncode, lived, delay
        )

    def wait(self, timeout: float) -> None:
        """At the primary's exit: give the secondaries `timeout` seconds to finish draining, then kill the rest."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        for child in self._children.values():
            if child is None:
                continue
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("secondary pid %d still running %.0f s after the shutdown began: killed", child.pid, timeout)
                child.kill()
                child.wait()
        os.close(self._pipe_r)
        os.close(self._pipe_w)
        shutil.rmtree(self._metrics_dir, ignore_errors=True)


class Secondary:
    """A secondary's side: ask the primary to reload the others, notice when the primary is gone."""

    def __init__(self, group: str) -> None:
        """`group` is "FD:PID": the pipe to the primary and its pid, given by the primary, since a primary killed while
        this process was still loading would otherwise leave it to record its new parent as its primary."""
        fd, _, pid = group.partition(":")
        self._pipe, self._primary = int(fd), int(pid)

    def signal(self, sig: int) -> None:
        """Nothing to forward: the secondary has no children."""

    def reload_others(self) -> None:
        with contextlib.suppress(OSError):  # the primary is gone: nothing to reload
            os.write(self._pipe, b"%d\n" % os.getpid())

    def tick(self) -> bool:
        """From the server's tick: True once the primary is gone (this process was re-parented), time to drain."""
        return os.getppid() != self._primary


Group = Primary | Secondary
