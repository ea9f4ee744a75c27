"""A node's state, the same words in both protocols' ``/status``."""

from __future__ import annotations

from enum import Enum


class PoCState(Enum):
    IDLE = "IDLE"
    GENERATING = "GENERATING"
    VALIDATING = "VALIDATING"
    STOPPED = "STOPPED"
