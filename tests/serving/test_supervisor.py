"""The supervisor's listening socket, as the workers' event loops use it (no model, no torch: fast)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from image_classifier.errors import UserError
from image_classifier.serving.supervisor import ACCEPTS_PER_TURN, LISTEN_BACKLOG, SharedListener, bind


def test_connections_accepted_from_the_shared_socket_have_nagle_off():
    """Nagle's algorithm with delayed ACKs held keep-alive answers about 40 ms each: asyncio turns it off only
    for sockets that say they are TCP."""

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listener = SharedListener.of(bind("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(Protocol, sock=listener, backlog=ACCEPTS_PER_TURN)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        try:
            return await asyncio.wait_for(accepted, 60)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0


def test_the_shared_queue_keeps_its_length_whatever_backlog_asyncio_passes():
    """asyncio calls listen(ACCEPTS_PER_TURN): the kernel must still queue connections that no worker has
    accepted yet (with a queue of 1, the third connect() here would time out)."""
    listener = SharedListener.of(bind("127.0.0.1", 0))
    listener.listen(ACCEPTS_PER_TURN)
    listener.settimeout(30)
    sockets = [listener]
    try:
        port = listener.getsockname()[1]
        sockets += [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(8)]
        sockets += [listener.accept()[0] for _ in range(8)]
        assert len(sockets) == 17 and 8 < LISTEN_BACKLOG
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_in_use_is_a_user_error():
    taken = bind("127.0.0.1", 0)
    taken.listen()
    try:
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1:"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
