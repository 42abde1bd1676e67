"""Named run profiles. A profile sets harness defaults here; each method keeps its own per-profile
settings in its ``profiles`` class attribute (see :class:`bench.registry.Method`)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import UnknownNameError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    default_datasets: tuple[str, ...]
    max_test_users: int | None  # None: every test user; else a fixed-seed subset shared by all methods
    bootstrap_samples: int
    reduced_schedule: bool  # rows of trained methods are marked "pipeline proof, not a ranking"


QUICK_TEST_USERS = 200

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile("smoke", "seconds: synthetic data, tiny random models (tests)", ("synthetic",), None, 200, True),
        # 200 test users: LLM decoding costs 0.15-1 s a user on 2 CPU cores, and the main job must stay
        # under 30 minutes with every method; the subset is the same for all of them
        Profile("quick", "the offline CPU default: ml-100k, SmolLM2-135M, reduced training schedules, "
                "200 test users", ("ml-100k",), QUICK_TEST_USERS, 1000, True),
        Profile("small", "full recipes with SmolLM2-135M, for one GPU", ("ml-100k",), None, 1000, False),
        Profile("paper", "the study's settings with Qwen/Qwen3-1.7B, for GPUs", ("beauty", "sports", "toys"),
                None, 1000, False),
    )
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError("profile", name, list(PROFILES))
    return PROFILES[name]
