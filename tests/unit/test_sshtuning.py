import socket

import paramiko

from rave.sshtuning import disable_nagle


def _transport_socket_nodelay() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        transport = paramiko.Transport(client)
        try:
            return transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            transport.close()
            peer.close()


def test_paramiko_transports_get_tcp_nodelay() -> None:
    disable_nagle()
    assert _transport_socket_nodelay() != 0


def test_patch_is_applied_once() -> None:
    disable_nagle()
    patched = paramiko.Transport.__init__
    disable_nagle()
    assert paramiko.Transport.__init__ is patched


def test_gevent_sockets_get_tcp_nodelay_too() -> None:
    from gevent import socket as gevent_socket

    disable_nagle()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = gevent_socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        transport = paramiko.Transport(client)
        try:
            assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            transport.close()
            peer.close()
