"""Which Ray cluster a run uses: a fresh one of its own, unless told to join one.

Flower's simulation engine calls ``ray.init()`` without an address, and Ray then joins "the
current cluster" it finds recorded in its temp dir, even one whose head was killed without
``ray stop``: the driver retries the dead address for minutes. So a run starts a Ray instance
of its own (``address="local"``) unless ``--ray-address`` names a cluster to join, and a named
cluster must answer at once (nothing listening) or within ``CONNECT_SECONDS`` (no reply).
"""

from __future__ import annotations

import socket
import time

CONNECT_SECONDS = 30.0


class RayAddressError(ValueError):
    """A ``--ray-address`` that is malformed or where no Ray cluster answers; one line."""


def ray_init_address(address: str | None, wait: float = CONNECT_SECONDS) -> str:
    """The ``address`` for ``ray.init``: "local" (a new instance) or a reachable ``host:port``."""
    if address is None:
        return "local"
    host, port = _host_port(address)
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return f"{host}:{port}"
        except ConnectionRefusedError:
            raise RayAddressError(f"--ray-address {address}: nothing listens there (connection refused)") from None
        except OSError as err:
            if time.monotonic() >= deadline:
                why = err.strerror or type(err).__name__
                message = f"--ray-address {address}: no Ray cluster answered in {wait:g} s ({why})"
                raise RayAddressError(message) from None
        time.sleep(0.5)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(f"--ray-address {address[:60]!r}: expected HOST:PORT of a Ray head (its GCS port)")
    return host.strip("[]"), int(port)
