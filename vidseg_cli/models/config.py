"""A network's configuration as the JSON its model file carries (safetensors metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Self


class JsonConfig:
    """Mixed into a frozen dataclass of a network's sizes and choices.

    A subclass overrides ``_upgrade`` where JSON loses a type (tuples come back as lists) or
    older files name fields that no longer exist."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls(**cls._upgrade(json.loads(text)))

    @classmethod
    def _upgrade(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return fields
