"""One router per resource: pipelines (with their webhook deliveries), usage, temp files, health."""
