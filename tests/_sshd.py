"""A real OpenSSH server on 127.0.0.2 and 127.0.0.3 for the SSH host tests.

Key login only, loopback only, a host key and a user key made for this run,
run as the current user without PAM. ``start()`` returns an :class:`Sshd` whose
``ssh_config`` file is what a user's ``~/.ssh/config`` would say (port, user,
key, known hosts), so the launcher logs in exactly as it would elsewhere.

``python tests/_sshd.py`` starts one and waits (Ctrl-C stops it), for trying
the launcher by hand.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HOSTS = ("127.0.0.2", "127.0.0.3")
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def sshd_binary() -> str | None:
    """The sshd program, if OpenSSH's server is installed."""
    found = shutil.which("sshd")
    return found or next((path for path in SSHD_PATHS if os.access(path, os.X_OK)), None)


def missing() -> str | None:
    """Why an sshd cannot run here, or None."""
    if sshd_binary() is None:
        return "OpenSSH's sshd is not installed (apt-get install openssh-server; .ci/scoop.sh does)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    return None


@dataclass
class Sshd:
    """A running sshd and the client files to reach it."""

    process: subprocess.Popen[bytes]
    folder: Path
    port: int
    ssh_config: Path
    log: Path
    hosts: tuple[str, ...] = HOSTS
    _log_file: object = field(default=None, repr=False)

    def sessions(self) -> list[psutil.Process]:
        """Every live process started through this sshd: its children's trees, and
        orphans whose ``SSH_CONNECTION`` names this server's port."""
        found: dict[int, psutil.Process] = {}
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        suffix = f" {self.port}"
        for process in psutil.process_iter():
            try:
                connection = process.environ().get("SSH_CONNECTION", "")
            except (psutil.Error, OSError):
                continue
            if connection.endswith(suffix) and connection.split()[2] in self.hosts:
                found[process.pid] = process
        return [p for p in found.values() if _alive(p)]

    def describe(self, processes: list[psutil.Process]) -> list[str]:
        out = []
        for process in processes:
            try:
                out.append(f"{process.pid} {' '.join(process.cmdline())[:150]}")
            except psutil.Error:
                out.append(str(process.pid))
        return out

    def wait_for_no_sessions(self, grace: float = 30.0) -> list[str]:
        """Wait until nothing started through this sshd runs; return what is left."""
        end = time.monotonic() + grace
        while True:
            left = self.sessions()
            if not left or time.monotonic() > end:
                return self.describe(left)
            time.sleep(0.2)

    def kill_sessions(self) -> None:
        for process in self.sessions():
            with contextlib.suppress(psutil.Error):
                process.kill()

    def stop(self) -> None:
        self.kill_sessions()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    """A port free on both addresses (tried a few times, binding each)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in HOSTS:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both 127.0.0.2 and 127.0.0.3")


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "parmap-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _write_files(folder: Path, port: int, user: str) -> Path:
    _keygen(folder / "host_key")
    _keygen(folder / "id_ed25519")
    shutil.copy(folder / "id_ed25519.pub", folder / "authorized_keys")
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(
        "".join(f"[{host}]:{port} {host_key[0]} {host_key[1]}\n" for host in HOSTS)
    )
    listen = "".join(f"ListenAddress {host}:{port}\n" for host in HOSTS)
    (folder / "sshd_config").write_text(
        f"{listen}HostKey {folder}/host_key\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nAllowUsers {user}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\nPrintMotd no\nX11Forwarding no\n"
        "AllowTcpForwarding no\nPermitTunnel no\nMaxStartups 64\nMaxSessions 64\n"
        "LogLevel VERBOSE\n"
    )
    config = folder / "ssh_config"
    config.write_text(
        f"Host {' '.join(HOSTS)}\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {folder}/id_ed25519\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder}/known_hosts\n  StrictHostKeyChecking yes\n"
    )
    return config


def start(folder: Path | None = None, deadline: float = 20.0) -> Sshd:
    """Start sshd on 127.0.0.2 and 127.0.0.3 and wait until it accepts connections.

    Raises:
        RuntimeError: sshd is missing, or exited, or does not listen in time.
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    folder = Path(folder or tempfile.mkdtemp(prefix="parmap-sshd-"))
    port, user = _free_port(), getpass.getuser()
    config = _write_files(folder, port, user)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = folder / "sshd.log"
    log_file = open(log, "wb")  # noqa: SIM115 - closed by Sshd.stop
    process = subprocess.Popen(
        [str(sshd_binary()), "-D", "-e", "-f", str(folder / "sshd_config")],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    sshd = Sshd(process, folder, port, config, log, _log_file=log_file)
    _wait_listening(sshd, deadline)
    return sshd


def _wait_listening(sshd: Sshd, deadline: float) -> None:
    end = time.monotonic() + deadline
    pending = list(sshd.hosts)
    while pending:
        if sshd.process.poll() is not None:
            log = sshd.log.read_text()
            raise RuntimeError(f"sshd exited with {sshd.process.returncode}: {log}")
        try:
            with socket.create_connection((pending[0], sshd.port), timeout=1):
                pending.pop(0)
        except OSError:
            if time.monotonic() > end:
                sshd.stop()
                raise RuntimeError(f"sshd did not listen within {deadline} s") from None
            time.sleep(0.1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too
    server = start()
    print(f"sshd on {', '.join(HOSTS)} port {server.port}; client config: {server.ssh_config}")
    print(f"try: python -m parmap.scoop --ssh-config {server.ssh_config} --hosts {' '.join(HOSTS)} "
          "script.py")  # fmt: skip
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        sys.exit(0)
