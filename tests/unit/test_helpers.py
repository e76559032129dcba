"""The test helpers themselves: a wait that really waits, ports that are free."""

from __future__ import annotations

import socket

from helpers import free_ports, wait_for


def test_waiting_twice_on_one_condition_asks_it_again() -> None:
    answers = iter([0, "first", 0, 0, "second"])

    def condition() -> object:
        return next(answers)

    assert wait_for(condition, timeout_s=5, step_s=0.01) == "first"
    assert wait_for(condition, timeout_s=5, step_s=0.01) == "second"


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
