"""GRBench: one harness, one split, one evaluator and one leaderboard for generative recommendation."""

__version__ = "0.1.0"
