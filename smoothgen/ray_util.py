"""What the front doors that start or join Ray share (`smoothgen certify --ray`, `smoothgen serve`): a quick
check that a cluster's address answers, and Ray's token file kept private."""
from __future__ import annotations

import os
import signal
import socket
import stat
import threading
from pathlib import Path

from smoothgen.errors import InvalidParameterError, SmoothgenError, first_line

#: Seconds to wait for a TCP connection to a cluster's address before saying it cannot be reached
#: (`ray.init` itself waits for minutes on an address where no cluster listens).
CONNECT_TIMEOUT_S = 5.0


class ClusterUnreachableError(SmoothgenError, RuntimeError):
    """No Ray cluster answers at the address given."""


def check_reachable(address: str, option: str = "--ray") -> None:
    """A TCP connection to the cluster's address (host:port, auto or ray://host:port) succeeds (also for
    `smoothgen serve --address`: option names the option in the messages)."""
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or address
    if target == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # a private helper of Ray: without it, ray.init finds the address itself
            return
        try:
            target = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise ClusterUnreachableError(f"{option} auto: {first_line(exc)} (start a cluster with `ray start --head`, or give "
                                   f"its address: {option} HOST:PORT)") from exc
        except Exception:  # noqa: BLE001 - Ray's own detection failed in another way: let ray.init say it
            return
    hostport = target.split("://", 1)[1] if "://" in target else target
    host, colon, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidParameterError(f"{option} {address!r} is not a Ray address: give HOST:PORT (the head node's "
                                    "`ray start --head` port, 6379 by default), auto, or ray://HOST:PORT (Ray Client)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = f"no answer in {CONNECT_TIMEOUT_S:g} s" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise ClusterUnreachableError(f"cannot reach a Ray cluster at {hostport}: {reason} (is `ray start --head` running there?)") from exc


def secure_auth_token() -> Path | None:
    """Make Ray's token file (~/.ray/auth_token) readable by its owner only, creating it that way when a
    local Ray instance is about to create it: Ray 2.60 writes it with the process's umask (often 0644,
    readable by every user of the machine), and whoever reads it may run code on the cluster. Returns
    the path, or None when token authentication is off (RAY_AUTH_MODE set to anything but "token")."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return None
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        return path
    try:
        from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

        token = generate_new_authentication_token()
    except ImportError:  # Ray's private generator moved: a token of the same strength
        import secrets

        token = secrets.token_hex(32)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    return path


def init_ray(ray, local: bool, **options) -> None:
    """ray.init(**options) as the front doors call it: for a local instance, Ray's token file is made private
    first (`secure_auth_token`); and the caller's SIGTERM handler is put back afterwards (ray.init installs its
    own, which exits at once with status 15). ray.init's own errors propagate."""
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if local:
        secure_auth_token()
    try:
        ray.init(**options)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
