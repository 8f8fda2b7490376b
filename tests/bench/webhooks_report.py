"""The report of the scale bench's webhook case (:func:`tests.bench.bench_scale.webhooks_case`): what a
catalog run costs with webhooks on, and how soon it ends after the last webhook."""

from __future__ import annotations

from typing import Any

from tests.bench import scale_measure as m

#: Issue #21 item 5's target, at 10 URLs per pipeline.
TARGET_API_PER_IMAGE = 0.15
TARGET_STATUS_PER_PIPELINE = 1.05


def _verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def render(facts: dict[str, Any]) -> str:
    """The webhook case's section (empty when the case did not run)."""
    case = facts.get("webhooks") or {}
    dag, hooks = case.get("dag"), case.get("webhooks") or {}
    if not dag:
        return ""
    requests = dag["requests"]
    api = sum(requests[k] for k in m.API_KINDS)
    posts = max(dag.get("accepted_posts") or requests[m.POST_PIPELINE], 1)
    per_image = api / max(dag["images"], 1)
    reads = requests[m.GET_PIPELINE] / posts
    last = hooks.get("last_webhook_at")
    tail = dag["ended_at"] - last if last else None
    table = dag["result_table"]
    floor = (1 + 1) / (dag["images"] / posts)
    lines = [
        "",
        f"## The catalog at scale with webhooks: {dag['images']:,} images",
        "",
        (
            f"Command: `LEAPI_BENCH_SCALE_WEBHOOK_IMAGES={dag['images']} "
            ".venv/bin/python -m tests.bench scale_webhooks` (`make bench` runs it with 100,000). The scale case's stack and sources, with "
            "`LEAPI_FEED_WEBHOOKS_CONN_ID` set: leapi-server signs its webhooks, the receiver is the provider's "
            'plugin on the api-server, a redis-server hands them to the triggerer (docs/catalog.md, "Webhooks").'
        ),
        "",
        (
            f"- API requests per image (result downloads not counted): **{per_image:.3f}** (target <= "
            f"{TARGET_API_PER_IMAGE}): {_verdict(per_image <= TARGET_API_PER_IMAGE)}. One submit and one status "
            f"read per pipeline is {floor:.2f} at {dag['images'] / posts:.0f} URLs per pipeline: the webhook is a "
            "hint, the read gives the result URLs, so 0.15 needs about 14 URLs per pipeline or more."
        ),
        (
            f"- status reads per pipeline: **{reads:.3f}** (target <= {TARGET_STATUS_PER_PIPELINE}): "
            f"{_verdict(reads <= TARGET_STATUS_PER_PIPELINE)}"
        ),
        f"- last webhook to the run's end: **{tail:.1f} s**" if tail is not None else "- last webhook: none",
        (
            f"- webhooks accepted by the receiver: {hooks.get('delivered', 0):,} for {hooks.get('pipelines', 0):,} "
            "pipelines"
        ),
        (
            f"- run {dag['state']} in {dag['dag_s']:.1f} s; {dag['objects']:,} objects, {table['rows']:,} rows "
            f"{table['by_status']}"
        ),
        f"- task starts {dag['starts']}, deferrals {dag['deferrals']}, worker-slot time {dag['slot_s']:.0f} s",
        "- requests by kind: " + ", ".join(f"{kind}: {count:,}" for kind, count in requests.items()),
        *_timeline(dag, last, dag.get("load")),
    ]
    return "\n".join(lines) + "\n"


def _timeline(dag: dict[str, Any], last_webhook: float | None, load: list[float] | None) -> list[str]:
    """Where the time after the last webhook went: seconds after the trigger, per batch."""
    queued = dag["ended_at"] - dag["dag_s"]
    marks = [
        ("last webhook", last_webhook),
        ("last result download", dag.get("last_download_at")),
        ("run end", dag["ended_at"]),
    ]
    lines = [
        "- timeline, s after the trigger: "
        + ", ".join(f"{name} {at - queued:.1f}" for name, at in marks if at is not None)
        + (
            f"; load average (1 min) {load[0]:.1f} at the trigger, peak {load[-1]:.1f}, on 2 shared cores"
            if load
            else ""
        ),
        "- batches (start / first transfer / last transfer / end, s after the trigger; deferrals): "
        + "; ".join(
            f"[{index}] {_s(b.get('start'))} / {_s(b.get('first_transfer'))} / {_s(b.get('last_transfer'))} / "
            f"{_s(b.get('end'))} ({b.get('deferrals')})"
            for index, b in dag.get("batches", {}).items()
        ),
        "",
        (
            "After the last webhook the run waits on nothing but its own work: each batch resumes as soon as "
            "its hinted pipelines allow (its trigger fires within a few hundred ms of the webhook, `make e2e "
            "WEBHOOKS=1`), then needs a free slot of the `leapi` pool (4) and transfers its images (download, "
            "S3 upload, result rows). The tail above is that transfer work on the shared cores."
        ),
    ]
    return lines


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
