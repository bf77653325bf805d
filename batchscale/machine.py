"""What else is running on this machine: the load average that timings are taken under."""

from __future__ import annotations

import os


def load() -> float | None:
    """The 1-minute load average (other processes share these cores), or None where the platform
    has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def loaded(load_1m: float | None, cpus: int | None) -> bool:
    """Whether a load average taken as our own work starts says the cores were busy (at least
    half of them): other work still running, or work that had just ended; the average cannot
    tell which."""
    return load_1m is not None and bool(cpus) and load_1m >= 0.5 * cpus
