"""Installing the provider is enough: the receiver's plugin (``airflow.plugins`` entry point) is mounted on
the api-server, the ``leapi_webhooks`` connection type and the ``[leapi]`` option are registered; and the
operator's webhook option."""

from __future__ import annotations

import types

import pytest

from leapi_provider.operators.leapi import WEBHOOK_FALLBACK_POLL_INTERVAL_S, LeapiSubmitPipelineOperator
from leapi_provider.webhooks.plugin import URL_PREFIX, LazyReceiverApp, LeapiWebhooksPlugin
from leapi_provider.webhooks.tokens import channel_for_task


def test_the_plugin_is_found_through_its_entry_point_and_mounts_the_receiver():
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    (ours,) = [app for app in apps if app["url_prefix"] == URL_PREFIX]
    assert isinstance(ours["app"], LazyReceiverApp)
    assert LeapiWebhooksPlugin.name == "leapi_webhooks"


def test_the_connection_type_and_option_are_registered():
    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    hook = ProvidersManagerTaskRuntime().hooks["leapi_webhooks"]
    assert hook is not None and hook.hook_class_name == "leapi_provider.webhooks.hook.LeapiWebhooksHook"
    assert manager.field_behaviours["leapi_webhooks"]["relabeling"]["password"] == "Token secret"
    assert conf.get("leapi", "webhooks_conn_id") == "leapi_webhooks_default"


def test_notify_url_and_webhook_conn_id_exclude_each_other():
    operator = LeapiSubmitPipelineOperator(
        task_id="t",
        source_urls="https://example.com/a.jpg",
        operations=[{"op": "preset/marketplace", "width": 64}],
        notify_url="https://example.com/hook",
        webhook_conn_id="leapi_webhooks_default",
    )
    ti = types.SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=None)
    # (checked once rendered, before any request: __init__ only assigns)
    with pytest.raises(ValueError, match="not both"):
        operator.submit_job({"ti": ti})  # type: ignore[arg-type]


def test_with_webhooks_the_trigger_gets_hints_and_a_fallback_gap():
    operator = LeapiSubmitPipelineOperator(
        task_id="t",
        source_urls="https://example.com/a.jpg",
        operations=[{"op": "preset/marketplace", "width": 64}],
        webhook_conn_id="hooks",
        poll_interval=10,
    )
    ti = types.SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=None)
    kwargs = operator._wait_kwargs({"ti": ti})  # type: ignore[arg-type]
    assert kwargs == {
        "poll_interval": WEBHOOK_FALLBACK_POLL_INTERVAL_S,
        "webhook_hints": {"channel": channel_for_task("d", "r", "t", -1), "conn_id": "hooks"},
    }
    operator.webhook_conn_id = None
    assert operator._wait_kwargs({"ti": ti}) == {"poll_interval": 10}  # type: ignore[arg-type]
