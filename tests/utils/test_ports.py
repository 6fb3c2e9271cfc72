"""free_port: a port nobody listens on, checked by binding it; check_port's range."""

from __future__ import annotations

import socket

import pytest

from reidscale.utils.ports import check_port, free_port


def test_free_port_is_bindable_and_skips_a_port_held_by_a_listener() -> None:
    first = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", first))  # the port really was free
        listener.listen(1)
        second = free_port()
        assert second != first
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.bind(("127.0.0.1", second))


@pytest.mark.parametrize("port", [0, -1, 65536, 80.0, True, "29500"])
def test_check_port_names_the_argument(port: object) -> None:
    with pytest.raises(ValueError, match=r"master_port must be an integer TCP port in 1\.\.65535"):
        check_port(port, "master_port")  # type: ignore[arg-type]


def test_check_port_returns_valid_ports() -> None:
    assert [check_port(port) for port in (1, 29561, 65535)] == [1, 29561, 65535]
