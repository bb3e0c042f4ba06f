"""Workflows as data: chains, groups, chords and DAGs compile to one JSON graph, and what
cannot run is refused when it is built."""

from __future__ import annotations

from typing import Any

import pytest

from bgcoor_core import InvalidWorkflowError, PayloadError, TaskManager
from bgcoor_core._composition import (
    Graph,
    Node,
    OnFailure,
    Workflow,
    chain,
    chord,
    compile_item,
    group,
)


@pytest.fixture
def manager() -> TaskManager:
    return TaskManager(broker_url="memory://", storage_url="memory://")


@pytest.fixture
def tasks(manager: TaskManager) -> Any:
    class Tasks:
        @staticmethod
        @manager.task(name="wf.fetch")
        def fetch(url: str) -> str:
            return url

        @staticmethod
        @manager.task(name="wf.parse")
        def parse(html: str) -> str:
            return html

        @staticmethod
        @manager.task(name="wf.store")
        def store(value: Any, table: str) -> None: ...

        @staticmethod
        @manager.task(name="wf.summarize")
        def summarize(results: list[Any]) -> int:
            return len(results)

        @staticmethod
        @manager.task(name="wf.notify")
        def notify(message: str) -> None: ...

    return Tasks


def shape(graph: Graph) -> list[tuple[str, list[int], list[Any]]]:
    return [(n.task, n.parents, n.inputs) for n in graph.nodes]


def test_a_chain_passes_each_result_on_as_the_next_first_argument(tasks: Any) -> None:
    graph = compile_item(chain(tasks.fetch.s("u"), tasks.parse.s(), tasks.store.s(table="pages")))
    assert shape(graph) == [
        ("wf.fetch", [], []),
        ("wf.parse", [0], [0]),
        ("wf.store", [1], [1]),
    ]
    assert graph.result == 2
    assert graph.nodes[2].payload == {"args": [], "kwargs": {"table": "pages"}}
    assert graph.roots() == [0]


def test_a_group_gathers_results_in_submission_order(tasks: Any) -> None:
    graph = compile_item(group(tasks.fetch.s(f"u{i}") for i in range(3)))
    assert shape(graph) == [("wf.fetch", [], [])] * 3
    assert graph.result == [0, 1, 2]
    assert graph.roots() == [0, 1, 2]


def test_a_chord_gives_its_callback_the_list_of_results(tasks: Any) -> None:
    graph = compile_item(chord(group(tasks.fetch.s("a"), tasks.fetch.s("b")), tasks.summarize.s()))
    assert shape(graph)[2] == ("wf.summarize", [0, 1], [[0, 1]])
    assert graph.result == 2


def test_an_empty_chord_header_runs_the_callback_at_once_with_no_results(tasks: Any) -> None:
    graph = compile_item(chord(group(), tasks.summarize.s()))
    assert shape(graph) == [("wf.summarize", [], [[]])]
    assert graph.roots() == [0]


def test_compositions_nest(tasks: Any) -> None:
    inner = chord(group(tasks.fetch.s("a"), tasks.fetch.s("b")), tasks.summarize.s())
    outer = chain(
        tasks.fetch.s("x"),
        group(chain(tasks.parse.s(), tasks.parse.s()), tasks.parse.s()),
        chord(group(inner, tasks.summarize.s()), tasks.summarize.s()),
    )
    graph = compile_item(outer)
    tasks_and_parents = [(n.task, n.parents) for n in graph.nodes]
    assert tasks_and_parents == [
        ("wf.fetch", []),  # 0
        ("wf.parse", [0]),  # 1: the group's chain
        ("wf.parse", [1]),  # 2
        ("wf.parse", [0]),  # 3: the group's other member
        ("wf.fetch", [2, 3]),  # 4, 5: the inner chord's header, after the group
        ("wf.fetch", [2, 3]),
        ("wf.summarize", [4, 5]),  # 6: the inner chord's callback
        ("wf.summarize", [2, 3]),  # 7
        ("wf.summarize", [6, 7]),  # 8: the outer chord's callback
    ]
    assert graph.nodes[4].inputs == [[2, 3]]  # the group's results, as one list
    assert graph.nodes[8].inputs == [[6, 7]]
    assert graph.result == 8


def test_an_immutable_signature_waits_but_takes_no_result(tasks: Any) -> None:
    graph = compile_item(chain(tasks.fetch.s("u"), tasks.notify.si("done")))
    assert shape(graph)[1] == ("wf.notify", [0], [])
    assert graph.nodes[1].payload == {"args": ["done"], "kwargs": {}}


def test_a_dag_gives_parents_results_in_the_order_of_after(tasks: Any) -> None:
    wf = Workflow(on_failure="continue")
    a = wf.add(tasks.fetch.s("a"))
    b = wf.add(tasks.fetch.s("b"))
    c = wf.add(tasks.store.s(), after=[b, a], on_error=tasks.notify.s("failed"))
    graph = wf.graph()
    assert shape(graph) == [
        ("wf.fetch", [], []),
        ("wf.fetch", [], []),
        ("wf.store", [0, 1], [1, 0]),
        ("wf.notify", [], []),
    ]
    assert graph.nodes[c.key].on_error == 3
    assert graph.nodes[3].errback is True
    assert graph.roots() == [0, 1]  # an errback is not a root: it runs only on failure
    assert graph.result == 2
    assert graph.on_failure is OnFailure.CONTINUE


def test_a_dag_with_several_sinks_results_in_their_list(tasks: Any) -> None:
    wf = Workflow()
    a = wf.add(tasks.fetch.s("a"))
    wf.add(tasks.parse.s(), after=[a])
    wf.add(tasks.parse.s(), after=[a])
    assert wf.graph().result == [1, 2]


def test_a_graph_is_json_and_back(tasks: Any) -> None:
    graph = compile_item(chord(group(tasks.fetch.s("a")), tasks.summarize.s()))
    again = Graph.from_json(graph.to_json())
    assert again == graph


def test_a_cycle_in_a_graph_from_elsewhere_is_refused() -> None:
    from bgcoor_core._composition import _checked

    nodes = [
        Node(key=0, task="t", parents=[1]),
        Node(key=1, task="t", parents=[0]),
        Node(key=2, task="t"),
    ]
    with pytest.raises(InvalidWorkflowError, match=r"cycle through nodes \[0, 1\]"):
        _checked(Graph(nodes=nodes, result=2))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda t: chain(), "at least one signature"),
        (lambda t: chain(t.fetch.s("a"), "nope"), "not str"),  # type: ignore[arg-type]
        (lambda t: Workflow(on_failure="maybe"), "'fail' or 'continue'"),
        (lambda t: Workflow().add(t.fetch.s("a"), after=[3]), "after= takes"),  # type: ignore[list-item]
        (lambda t: Workflow().add(t.fetch.s("a"), on_error=chain(t.fetch.s("b"))), "on_error"),  # type: ignore[arg-type]
        (lambda t: compile_item(group()), "at least one task"),
    ],
)
def test_bad_compositions_are_refused_naming_the_problem(
    tasks: Any, build: Any, match: str
) -> None:
    with pytest.raises(InvalidWorkflowError, match=match):
        build(tasks)


def test_a_signature_checks_the_arguments_it_is_given(tasks: Any) -> None:
    with pytest.raises(PayloadError, match="unexpected keyword argument 'colour'"):
        tasks.parse.s(colour="red")
    tasks.store.s(table="t")  # the first argument comes from a parent: partial is fine


def test_a_stored_graph_that_refers_to_nodes_it_lacks_has_a_problem() -> None:
    sound = Graph(nodes=[Node(key=0, task="t"), Node(key=1, task="t", parents=[0])], result=1)
    assert sound.problem() is None
    dangling = Graph(nodes=[Node(key=0, task="t", parents=[5])], result=0)
    assert dangling.problem() == "node 0 of its graph refers to nodes it does not have"
    shuffled = Graph(nodes=[Node(key=1, task="t")], result=0)
    assert shuffled.problem() == "node 0 of its graph refers to nodes it does not have"
    lost = Graph(nodes=[Node(key=0, task="t")], result=[0, 3])
    assert lost.problem() == "its result refers to nodes it does not have"
