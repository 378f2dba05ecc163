"""Capacity tests for hsmlb: Locust users (unary and Stream), an own asyncio stream client, and a verdict.

`python -m loadtest run --profile NAME` brings up a dev cluster and the daemon, drives them and
exits 0 only when every threshold of the profile holds. See loadtest/README.md.
"""
