"""Reports: analytics and percentiles over history, queue stats and health, the metrics counters,
error signatures.
"""
