"""Which Ray cluster a run uses: a fresh one of its own, unless told to join one.

Flower's simulation engine calls ``ray.init()`` without an address, and Ray then joins "the
current cluster" it finds recorded in its temp dir, even one whose head was killed without
``ray stop``: the driver retries the dead address for minutes. So a run starts a Ray instance
of its own (``address="local"``) unless ``--ray-address`` names a cluster to join, and a named
cluster must answer gRPC, as a Ray head's GCS does, within ``CONNECT_SECONDS``; nothing
listening, a host name that does not resolve, or a server that is not gRPC fail at once.
"""

from __future__ import annotations

import socket
import time

CONNECT_SECONDS = 30.0


class RayAddressError(ValueError):
    """A ``--ray-address`` that is malformed or where no Ray cluster answers; one line."""


#: What a gRPC server (a Ray head's GCS) answers first: the HTTP/2 preface, then a SETTINGS frame.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS_FRAME = 4


def ray_init_address(address: str | None, wait: float = CONNECT_SECONDS, source: str = "--ray-address") -> str:
    """The ``address`` for ``ray.init``: "local" (a new instance) or ``host:port`` where a gRPC
    server (a Ray head's GCS) answers. ``source`` names where the address came from, for the
    error line. Ray itself retries an address that does not answer gRPC without end."""
    if address is None:
        return "local"
    host, port = _host_port(address, source)
    deadline = time.monotonic() + wait
    while True:
        try:
            if _speaks_grpc(host, port, max(0.1, min(5.0, deadline - time.monotonic()))):
                return f"{host}:{port}"
            raise RayAddressError(f"{source} {address}: something listens there, but not a Ray head (no gRPC answer)")
        except ConnectionRefusedError:
            raise RayAddressError(f"{source} {address}: nothing listens there (connection refused)") from None
        except socket.gaierror as err:
            raise RayAddressError(f"{source} {address}: the host name does not resolve ({err.strerror})") from None
        except OSError as err:
            if time.monotonic() >= deadline:
                why = err.strerror or type(err).__name__
                raise RayAddressError(f"{source} {address}: no Ray cluster answered in {wait:g} s ({why})") from None
        time.sleep(0.5)


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """Whether the server at ``host:port`` answers the HTTP/2 preface with a SETTINGS frame;
    OSError (e.g. ``TimeoutError``) when it does not answer in time."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(HTTP2_HELLO)
        header = conn.recv(9)
    return len(header) >= 4 and header[3] == SETTINGS_FRAME


def _host_port(address: str, source: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(f"{source} {address[:60]!r}: expected HOST:PORT of a Ray head (its GCS port)")
    return host.strip("[]"), int(port)
