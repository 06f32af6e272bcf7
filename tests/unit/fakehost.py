"""A stand-in pyinfra host for operation tests: facts answered by their real commands run on
this machine (or by canned answers), inside a pyinfra state/host context."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyinfra.context import ctx_host, ctx_state


def run_fact(fact: Any, **kwargs: Any) -> Any:
    output = subprocess.run(
        ["sh", "-c", str(fact.command(**kwargs))], capture_output=True, text=True, check=True
    ).stdout
    return fact.process(output.splitlines())


class FakeState:
    """What rave.runstate needs of pyinfra's State: a place for callback handlers."""

    def __init__(self) -> None:
        self.callback_handlers: list[Any] = []

    def add_callback_handler(self, handler: Any) -> None:
        self.callback_handlers.append(handler)


class FakeHost:
    """get_fact runs the fact's command locally unless `answers` has the fact's class."""

    name = "fake"
    executing_op_hash: str | None = None

    def __init__(self, answers: dict[type, Callable[..., Any]] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.noops: list[str] = []
        self.state = FakeState()

    def get_fact(self, fact_cls: type, **kwargs: Any) -> Any:
        self.asked.append((fact_cls.__name__, kwargs))
        if fact_cls in self.answers:
            return self.answers[fact_cls](**kwargs)
        return run_fact(fact_cls(), **kwargs)

    def noop(self, message: str) -> None:
        self.noops.append(message)

    def get_temp_filename(self, key: str) -> str:
        return f"/tmp/pyinfra-{hashlib.sha1(key.encode()).hexdigest()}"

    @contextmanager
    def active(self) -> Iterator[FakeHost]:
        with ctx_state.use(self.state), ctx_host.use(self):
            yield self
