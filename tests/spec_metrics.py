"""The metric families layerwatch exports, with the chain gauges the alerts use: (name, type).

One list for every test that checks what layerwatch exports, so the list is written down once.
"""

SPEC_METRIC_FAMILIES: tuple[tuple[str, str], ...] = (
    ("layerwatch_artifact_hop_healthy", "gauge"),
    ("layerwatch_artifact_hop_verdict", "gauge"),
    ("layerwatch_artifact_hop_last_check_timestamp_seconds", "gauge"),
    ("layerwatch_hop_up", "gauge"),
    ("layerwatch_checks_total", "counter"),
    ("layerwatch_check_duration_seconds", "histogram"),
    ("layerwatch_registry_requests_total", "counter"),
    ("layerwatch_blob_bytes_verified_total", "counter"),
    ("layerwatch_build_info", "gauge"),
    ("layerwatch_chain_interval_seconds", "gauge"),
    ("layerwatch_artifact_blame", "gauge"),
    ("layerwatch_hop_blamed_artifacts", "gauge"),
    ("layerwatch_artifact_hop_verdict_since_timestamp_seconds", "gauge"),
    ("layerwatch_chain_ready", "gauge"),
)
