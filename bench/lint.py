"""10. Revision lint: `lint_revisions` over the lock corpus (tests/data/lock_corpus).

The floor is what the lint cannot do without: rendering each revision offline
and one squawk run on its SQL. The lint adds its own rules, the statement
rules and the mapping of squawk's findings to keys.
"""

from alembic.script import ScriptDirectory

from app.migration.authoring.lint import lint_revisions, recorded_upgrade
from app.migration.authoring.squawk import squawk_findings, squawk_script
from bench.common import PROJECT_ROOT, Report, measure_interleaved, ratio, time_call

CORPUS = PROJECT_ROOT / "tests" / "data" / "lock_corpus"
TARGET_RATIO = 1.3


def render_and_squawk(corpus: ScriptDirectory) -> None:
    for script in corpus.walk_revisions():
        squawk_findings(squawk_script(recorded_upgrade(script).statements)[0])


def run(quick: bool, runs: int) -> Report:
    corpus = ScriptDirectory(str(CORPUS))
    count = len(list(corpus.walk_revisions()))
    report = Report(f"10. Revision lint ({count} revisions)")
    figures = measure_interleaved(
        runs,
        {
            "floor: render offline + squawk, per revision": lambda: time_call(
                lambda: render_and_squawk(corpus)
            ),
            "lint_revisions": lambda: time_call(lambda: lint_revisions(corpus)),
        },
    )
    floor, lint = figures.values()
    report.add(floor)
    report.add(lint, floor)
    over_floor = ratio(lint, floor)
    per_revision_ms = lint.seconds * 1e3 / count
    report.check(
        f"lint <= {TARGET_RATIO}x floor",
        over_floor <= TARGET_RATIO,
        f"{over_floor:.2f}x ({lint.seconds * 1e3:.0f} ms, {per_revision_ms:.0f} ms a revision)",
    )
    return report
