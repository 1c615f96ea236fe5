"""Signs of life from a long upgrade.

Alembic logs "Running upgrade A -> B" as a revision starts. A table rebuild on
a large SQLite file can then run for minutes; `RevisionHeartbeat` logs a line
every `every_s` seconds until the revision ends, so an operator watching the
container's log can tell a slow revision from a hung one.
"""

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0


class RevisionHeartbeat:
    """Knows which of the run's revisions is running; an `on_version_apply` callback."""

    def __init__(self, every_s: float | None = None) -> None:
        self.every_s = every_s or HEARTBEAT_EVERY_S
        self.revisions: Sequence[str] = ()
        self.done = 0
        self.started = time.monotonic()
        self.stop = threading.Event()

    def __call__(self, **_kwargs) -> None:
        self.done += 1
        self.started = time.monotonic()

    def running(self) -> str | None:
        return self.revisions[self.done] if self.done < len(self.revisions) else None

    def beat(self) -> None:
        """Until stopped: every `every_s` seconds of one revision, say it still runs."""
        while not self.stop.wait(self.seconds_to_next_beat()):
            revision, elapsed = self.running(), time.monotonic() - self.started
            if revision is not None and elapsed >= self.every_s * 0.99:
                log.info("Revision %s still running (%.0f s so far)", revision, elapsed)

    def seconds_to_next_beat(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.every_s - elapsed % self.every_s

    @contextmanager
    def running_revisions(self, revisions: Sequence[str]) -> Iterator[None]:
        """Beat in a daemon thread while the block runs `revisions` in this order."""
        self.revisions, self.done, self.started = tuple(revisions), 0, time.monotonic()
        self.stop.clear()
        thread = threading.Thread(target=self.beat, name="revision-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join()
