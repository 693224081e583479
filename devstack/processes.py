"""Helpers for the servers the local stack starts: ports, users, waiting."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from devstack.errors import DevStackError

SERVICE_USER = "covenant-svc"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, what: str, variable: str) -> None:
    if port_in_use(port):
        raise DevStackError(
            f"port {port} ({what}) is already in use. Stop whatever listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port with {variable}=..."
        )


def require_free_ports(wanted: list[tuple[int, str, str]]) -> None:
    """Every (port, what, variable) must be free; one error names all that are not."""
    busy = [(port, what, variable) for port, what, variable in wanted if port_in_use(port)]
    if not busy:
        return
    lines = [
        f"port {port} ({what}) is already in use: choose another with {variable}=..."
        for port, what, variable in busy
    ]
    ports = ",".join(f":{port}" for port, _, _ in busy)
    raise DevStackError(
        "\n".join(lines) + f"\nor stop whatever listens there (`ss -ltnp` shows it: {ports})"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise DevStackError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def command_line(pid: int) -> str | None:
    """The command line of a running process, or None when there is none."""
    try:
        listing = subprocess.run(
            ["ps", "-p", str(pid), "-o", "args="],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError:
        return None
    return listing.stdout.strip() or None


def stop_pid(pid: int, what: str, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; returns once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not _running(pid), timeout_s, f"{what} (pid {pid}) to stop")
        except DevStackError:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _running(pid), 5, f"{what} (pid {pid}) to be killed")
    except ProcessLookupError:
        return
    except PermissionError as exc:
        raise DevStackError(
            f"{what} (pid {pid}) belongs to another user; stop it, then start again"
        ) from exc


def _running(pid: int) -> bool:
    """False once `pid` has exited, including as a zombie its new parent has not reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is the answer
    return stat.rpartition(")")[2].split()[0] != "Z"


def service_user() -> str | None:
    """PostgreSQL refuses to run as root. When we are root, servers run as an unprivileged
    system user, created on first use; otherwise as ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise DevStackError(
                "running as root needs an unprivileged user for PostgreSQL, and `useradd` "
                "is missing; run as a normal user instead"
            ) from None
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
    return SERVICE_USER


def hand_over(path: Path, user: str | None) -> None:
    """Makes `path` (a folder we created) owned by the service user, and every parent
    traversable by it."""
    path.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for folder in [path, *path.rglob("*")]:
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
