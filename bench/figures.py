"""What one ``python -m bench`` run measured: the figures ``main`` collects and ``report`` writes out.

Its own module so that ``main`` (which fills it) and ``report`` (which reads it) need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .common import Run
from .fleet import Fleet
from .lag import Trial
from .startup import ImportTime, Profile

# In the order they run (and the report lists the load before each).
FIGURES = ("startup", "cost", "economy", "lag", "fleet", "pods")


@dataclass
class Results:
    started: str
    finished: str = ""
    duration: float = 0.0
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loads: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # before each figure
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    keycloak: dict[str, float] = field(default_factory=dict)
    env: dict[str, list[Run]] = field(default_factory=dict)
    imports: dict[str, dict[str, float]] = field(default_factory=dict)
    importtime: dict[str, ImportTime] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    costs: dict[str, list[Run]] = field(default_factory=dict)
    economy: dict[str, list[str]] = field(default_factory=dict)
    lag: list[Trial] = field(default_factory=list)
    fleets: list[Fleet] = field(default_factory=list)
    pods: list[Fleet] = field(default_factory=list)  # Kubernetes shared mode: Pods on one Secret
