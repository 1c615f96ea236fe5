"""Signs of life from a long upgrade.

Alembic logs "Running upgrade A -> B" as a revision starts. A table rebuild on
a large SQLite file can then run for minutes; `RevisionHeartbeat` logs a line
every `every_s` seconds until the revision ends, so an operator watching the
container's log can tell a slow revision from a hung one.

`StepClock` is the run's one clock: Alembic calls it after each step (and the
adoption of a legacy database calls it with an `Adoption`), and it hands the
step's duration to the callbacks that log and record steps.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0


@dataclass(frozen=True)
class Adoption:
    """The adoption step: a database made before migrations, stamped at `revision`.

    Listeners receive it as `adoption=`; Alembic's own steps come as `step=`.
    """

    connection: Connection
    revision: str
    description: str
    schema_name: str | None


class StepClock:
    """An `on_version_apply` callback timing each step from the end of the one before.

    It calls each of `listeners` with the step's keyword arguments and `seconds`;
    the next step's time starts once they return, so what they do (writing a
    history row, measuring) is not counted as the next step's.
    """

    def __init__(self, *listeners: Callable[..., None]) -> None:
        self.listeners = listeners
        self.restart()

    def restart(self) -> None:
        self.step_started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.step_started

    def __call__(self, **step: object) -> None:
        seconds = self.elapsed()
        for listener in self.listeners:
            listener(seconds=seconds, **step)
        self.restart()


class RevisionHeartbeat:
    """Knows which of the run's revisions is running; a listener of the run's `StepClock`."""

    def __init__(self, clock: StepClock, every_s: float | None = None) -> None:
        self.clock = clock
        self.every_s = every_s or HEARTBEAT_EVERY_S
        self.revisions: Sequence[str] = ()
        self.done = 0
        self.stop = threading.Event()

    def __call__(self, *, adoption: Adoption | None = None, **_step: object) -> None:
        if adoption is None:
            self.done += 1

    def running(self) -> str | None:
        return self.revisions[self.done] if self.done < len(self.revisions) else None

    def beat(self) -> None:
        """Until stopped: every `every_s` seconds of one revision, say it still runs."""
        while not self.stop.wait(self.seconds_to_next_beat()):
            revision, elapsed = self.running(), self.clock.elapsed()
            if revision is not None and elapsed >= self.every_s * 0.99:
                log.info("Revision %s still running (%.0f s so far)", revision, elapsed)

    def seconds_to_next_beat(self) -> float:
        elapsed = self.clock.elapsed()
        return self.every_s - elapsed % self.every_s

    @contextmanager
    def running_revisions(self, revisions: Sequence[str]) -> Iterator[None]:
        """Beat in a daemon thread while the block runs `revisions` in this order."""
        self.revisions, self.done = tuple(revisions), 0
        self.clock.restart()
        self.stop.clear()
        thread = threading.Thread(target=self.beat, name="revision-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join()
