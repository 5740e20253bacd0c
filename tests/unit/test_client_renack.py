"""The Python client's re-NACK policy: ask again, each packet a bounded number of times."""

from signaling.client.renack import Renacker


def test_missing_packets_are_asked_again_until_the_limit() -> None:
    renacker = Renacker(max_tries=3)
    asked = [renacker.due({10, 11}) for _ in range(4)]
    assert asked == [[10, 11], [10, 11], [10, 11], []]


def test_a_packet_that_arrived_is_forgotten_and_a_new_hole_starts_fresh() -> None:
    renacker = Renacker(max_tries=2)
    assert renacker.due({5}) == [5]
    assert renacker.due({5, 9}) == [5, 9]
    assert renacker.due({9}) == [9]  # 5 arrived
    assert renacker.due({9}) == []  # 9 asked twice already
    assert renacker.due({5}) == [5]  # 5 missing again (a new hole after wrap): fresh count
