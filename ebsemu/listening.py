"""The server's listening address, bound before anything else is done at start-up.

A port another process holds stops the start at once, before the database is migrated or a key
is generated. The sockets are only bound here; aiohttp listens on them once the application
has started, so until then a client is refused, as it always was.
"""

from __future__ import annotations

import socket


def bind(host: str, port: int) -> list[socket.socket]:
    """One bound TCP socket per address ``host`` resolves to, bound as asyncio's create_server
    binds them (SO_REUSEADDR; an IPv6 socket IPv6 only). OSError naming the address if one
    cannot be had."""
    bound: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(found):
            bound.append(_bound(family, kind, proto, address))
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror}") from None
    return bound


def _bound(
    family: socket.AddressFamily, kind: socket.SocketKind, proto: int, address: tuple[object, ...]
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
