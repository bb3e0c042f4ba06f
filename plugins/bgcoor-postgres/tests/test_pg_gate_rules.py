"""The gate step's rules (``bgcoor_postgres._gates.Decisions``) on their own, no server:
the same outcomes as the memory broker's reference for the same sequence of messages."""

from __future__ import annotations

from collections import Counter

from bgcoor_postgres._gates import Candidate, Decisions, parse_gate

from bgcoor_core.kit import Gate

NOW = 1_790_000_000.0


def candidate(n: int, gate: Gate | None, **fields: object) -> Candidate:
    return Candidate(f"m{n}", 1, gate, **fields)  # type: ignore[arg-type]


def test_concurrency_comes_first_and_a_parked_message_spends_no_rate_slot() -> None:
    gate = Gate("k", 10.0, concurrency=1)
    decisions = Decisions({"k": 0}, {"k": None}, NOW)
    for n in range(3):
        decisions.judge(candidate(n, gate))
    plan = decisions.plan()
    assert plan.take == [("m0", 1, "k", None)]  # holds the slot
    assert plan.park == [("m1", "k"), ("m2", "k")]
    assert plan.tats == {"k": NOW + 10.0}  # one admission: the parked spent none
    assert decisions.saturated == {"k"}


def test_a_rate_defers_to_successive_slots_and_an_admitted_message_passes_once() -> None:
    gate = Gate("r", 2.0)
    decisions = Decisions({}, {"r": NOW + 4.0}, NOW)
    decisions.judge(candidate(0, gate, admitted=True))  # its slot fell due: it passes
    decisions.judge(candidate(1, gate))
    decisions.judge(candidate(2, gate))
    plan = decisions.plan()
    assert plan.take == [("m0", 1, None, None)]
    assert plan.defer == [("m1", NOW + 4.0), ("m2", NOW + 6.0)]
    assert plan.tats == {"r": NOW + 8.0}


def test_a_burst_admits_that_many_at_once() -> None:
    gate = Gate("r", 30.0, burst=3)
    decisions = Decisions({}, {"r": None}, NOW)
    for n in range(4):
        decisions.judge(candidate(n, gate))
    plan = decisions.plan()
    assert [t[0] for t in plan.take] == ["m0", "m1", "m2"]
    assert [d[0] for d in plan.defer] == ["m3"]


def test_a_message_behind_is_left_alone_when_it_would_pass() -> None:
    gate = Gate("k", 1.0, concurrency=2)
    decisions = Decisions({"k": 1}, {"k": None}, NOW)
    assert not decisions.wait("behind", gate)  # a slot and a rate slot are free
    plan = decisions.plan()
    assert (plan.take, plan.park, plan.defer, plan.tats) == ([], [], [], {})
    decisions.judge(candidate(0, gate))  # takes the last slot
    assert decisions.wait("behind", gate)  # now it parks
    assert decisions.plan().park == [("behind", "k")]


def test_lapsed_slots_release_parked_messages_only_while_slots_are_free() -> None:
    gate = Gate("k", concurrency=2)
    # two holders' leases ran out; one candidate takes a slot: one parked may go back
    decisions = Decisions({"k": 0}, {}, NOW, lapsed=[("old1", "k"), ("old2", "k")])
    decisions.judge(candidate(0, gate))
    plan = decisions.plan()
    assert plan.lapsed == ["old1", "old2"]
    assert plan.unpark == Counter(k=1)
    # a candidate that itself held the slot under a lapsed lease and takes it again
    again = Decisions({"k": 1}, {}, NOW)
    again.judge(candidate(1, gate, lapsed="k"))
    assert again.plan().unpark == Counter()  # both slots held: nothing is released


def test_defects_are_taken_without_a_slot() -> None:
    decisions = Decisions({"k": 5}, {}, NOW)
    decisions.judge(candidate(0, None, defect="gate = 'x'"))
    assert decisions.plan().take == [("m0", 1, None, "gate = 'x'")]


def test_unusable_gates_are_defects() -> None:
    assert parse_gate(Gate("k", 0.5, 2, 3).encode()) == Gate("k", 0.5, 2, 3)
    for text in ("", "x", "0.5 1 - ", "0.5 0 - k", "- 1 0 k", "nan 1 - k", "-1.0 1 - k"):
        assert isinstance(parse_gate(text), str), text
