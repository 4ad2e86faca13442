"""A watcher's first converge is run again while the engine does not answer (agent/watch.py:
through_engine_restarts); any other error ends it as before."""

from __future__ import annotations

import pytest

from agent import watch
from agent.engine import ContainerGone, EngineAbsent, EngineLost
from agent.errors import ConvergeError


def test_lost_or_absent_engines_are_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("agent.watch.time.sleep", pauses.append)
    failures: list[Exception] = [EngineAbsent("the Docker engine does not answer"),
                                 EngineLost("the Docker engine stopped answering"),
                                 ContainerGone("the Docker engine failed: No such container: "
                                               "2308fb97")]
    said: list[str] = []

    def work() -> str:
        if failures:
            raise failures.pop(0)
        return "converged"

    assert watch.through_engine_restarts(work, said.append) == "converged"
    assert pauses == [0.5, 1.0, 2.0]
    assert said[0] == "the Docker engine does not answer; trying again in 0.5 s"


def test_any_other_failure_ends_the_run() -> None:
    def work() -> None:
        raise ConvergeError("syntho-core did not become healthy")

    with pytest.raises(ConvergeError):
        watch.through_engine_restarts(work, print)


def test_only_a_removed_container_is_a_container_gone() -> None:
    import docker

    from agent.engine import EngineError, _sdk

    def raising(explanation: str) -> None:
        @_sdk
        def call() -> None:
            raise docker.errors.NotFound("404", explanation=explanation)
        call()

    with pytest.raises(ContainerGone):
        raising("No such container: 2308fb97")
    with pytest.raises(EngineError) as other:
        raising("No such image: syntho/nowhere:1")  # a missing image stays an error
    assert not isinstance(other.value, ContainerGone)
