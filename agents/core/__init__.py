"""The pure timing core (no I/O, no clock, no framework)."""
from .engine import CoreConfig, Engine

__all__ = ["CoreConfig", "Engine"]
