"""Helpers shared by the launchers: the server lifecycle as a context manager, free loopback ports and
running a command as a non-root user."""

from __future__ import annotations

import abc
import contextlib
import os
import pwd
import resource
import shutil
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

from services.errors import ServiceError

UNPRIVILEGED_USER = "nobody"


class Throwaway(abc.ABC):
    """A disposable server as a context manager: started when entered (cleaned up if it fails to
    start), stopped and deleted (``cleanup``) when left."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the server and wait until it accepts clients."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Stop the server and delete its files."""

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the server process is alive."""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()



def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_as_user() -> str | None:
    """The user servers that refuse root run as: ``nobody`` when we are root, else None (ourselves)."""
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def as_user(user: str | None, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` (setpriv: no PAM, no login shell), or unchanged for None."""
    if user is None:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ServiceError("setpriv (util-linux) is needed to run servers as a non-root user")
    entry = pwd.getpwnam(user)
    return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--", *argv]


def give_to(user: str | None, path: Path) -> None:
    """Make ``user`` the owner of ``path`` (a fresh directory), so a demoted server can write there."""
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit.

    Also safe as a ``preexec_fn`` (it never raises): servers under test get the same limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft
