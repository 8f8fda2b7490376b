"""Event-driven starts (opt-in, see docs/provider.md "Event-driven feed runs").

* :mod:`~.s3_events`: S3 notifications (through SQS, SNS or EventBridge) to manifest writes and run ids;
* :mod:`~.feed`: the watched asset (the Amazon provider's ``SqsSensorTrigger``) and the dispatcher DAG that
  starts one catalog run per manifest write.
"""

from __future__ import annotations

from leapi_provider.events.feed import feed_manifest_asset, feed_manifest_dispatcher
from leapi_provider.events.s3_events import ManifestArrival, manifest_arrivals

__all__ = ["ManifestArrival", "feed_manifest_asset", "feed_manifest_dispatcher", "manifest_arrivals"]
