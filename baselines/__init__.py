"""Baseline methods; every module here registers itself (see bench.registry)."""
