"""Generative and LLM methods; every module here registers itself (see bench.registry)."""
