"""The fault run's reading of leapi-server's access log (:class:`tests.e2e.faults.AccessLog`)."""

from __future__ import annotations

from tests.e2e.faults import LOST_TRY_MESSAGE, RACE_MESSAGE, AccessLog, Request, race_events

LINES = (
    '2026-12-04 12:50:10,588 INFO uvicorn.access: 127.0.0.1:46412 - "POST /v1/pipeline HTTP/1.1" 200\n'
    "2026-12-04 12:50:11,001 INFO leapi_server: a line that is not an access line\n"
    '2026-12-04 12:50:35,286 INFO uvicorn.access: 127.0.0.1:45518 - "GET /v1/tmp/p/2/sku-0004.jpg'
    '?expires=1796475013&signature=REDACTED HTTP/1.1" 200\n'
)


def test_reads_new_complete_access_lines_only_once(tmp_path):
    path = tmp_path / "server.log"
    path.write_text(
        '2026-12-04 12:48:23,809 INFO uvicorn.access: 127.0.0.1:58302 - "GET /healthz HTTP/1.1" 200\n'
    )
    log = AccessLog(path)  # what the log held before is not this run's
    with open(path, "a") as handle:
        handle.write(LINES + '2026-12-04 12:50:36,000 INFO uvicorn.access: 127.0.0.1:45519 - "GET /v1/pi')

    assert log.read() == [
        Request(46412, "POST", "/v1/pipeline"),
        Request(45518, "GET", "/v1/tmp/p/2/sku-0004.jpg"),
    ]
    assert log.read() == []
    with open(path, "a") as handle:  # the half-written line, completed
        handle.write('peline/7 HTTP/1.1" 200\n')
    assert log.read() == [Request(45519, "GET", "/v1/pipeline/7")]


class RecordedRun:
    """A finished run's records as the REST API gives them (the parts :func:`race_events` reads)."""

    def __init__(self) -> None:
        mismatch = (
            "Executor LocalExecutor reported that the task instance <...> " + RACE_MESSAGE + " running."
        )
        self.events = [
            {"event": "deferred", "task_id": "batch", "map_index": 0, "try_number": 1, "when": "t0"},
            {"event": "state mismatch", "task_id": "batch", "map_index": 0, "try_number": 1, "when": "t1",
             "extra": mismatch},
            {"event": "state mismatch", "task_id": "batch", "map_index": 5, "try_number": 1, "when": "t2",
             "extra": mismatch},  # the harness's own kill
        ]  # fmt: skip
        self.tis = [
            {"task_id": "batch", "map_index": 0, "try_number": 2},
            {"task_id": "batch", "map_index": 3, "try_number": 2},
            {"task_id": "batch", "map_index": 5, "try_number": 2},
            {"task_id": "batch", "map_index": 6, "try_number": 1},
        ]
        self.logs = {
            (3, 1): f'ServerResponseError: 404 {{"detail": "{LOST_TRY_MESSAGE}"}}',
            (0, 1): "",
            (5, 1): "",
        }

    def event_log(self, dag_id: str, run_id: str) -> list[dict]:
        return self.events

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.tis

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int) -> str:
        return self.logs[(map_index, try_number)]


def test_counts_each_try_lost_to_the_race_once_and_never_a_try_the_harness_killed():
    races = race_events(RecordedRun(), "run", killed={(5, 1)})  # type: ignore[arg-type]

    assert list(races) == [(0, 1), (3, 1)]
    assert "state mismatch" in races[(0, 1)]
    assert LOST_TRY_MESSAGE in races[(3, 1)]
    assert race_events(RecordedRun(), "run", killed={(0, 1), (3, 1), (5, 1)}) == {}  # type: ignore[arg-type]
