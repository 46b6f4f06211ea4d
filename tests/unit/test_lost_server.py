"""`CONNECTION_LOST_TIMEOUT`: TCP sockets give up on a silent server after that long."""

import socket
from datetime import timedelta

import pytest

from skill_store import Settings
from skill_store.database import detect_lost_server


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux's TCP options")
def test_a_tcp_socket_probes_a_silent_server_and_gives_up_after_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        detect_lost_server(sock, Settings(connection_lost_timeout=timedelta(seconds=10)))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + probes * interval <= 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000


def test_a_unix_socket_is_left_alone() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        detect_lost_server(sock, Settings(connection_lost_timeout=timedelta(seconds=10)))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.mark.parametrize(("value", "seconds"), [("2", 2), ("2.5", 2.5), ("PT1M", 60)])
def test_the_timeout_is_read_in_seconds(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    monkeypatch.setenv("CONNECTION_LOST_TIMEOUT", value)
    assert Settings().connection_lost_timeout == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["0", "0.5", "3601", "-1"])
def test_a_timeout_outside_one_second_to_one_hour_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CONNECTION_LOST_TIMEOUT", value)
    with pytest.raises(ValueError, match="connection_lost_timeout"):
        Settings()
