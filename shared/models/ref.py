"""What identifies an instance: everything else is derived from configuration."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PARTY = re.compile(r"[1-9][0-9]{0,18}")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")


@dataclass(frozen=True)
class InstanceRef:
    """What identifies an instance: everything else is derived from configuration."""

    org: str
    app: str
    party_id: str
    instance_guid: str

    @property
    def instance_id(self) -> str:
        return f"{self.party_id}/{self.instance_guid}"

    @property
    def app_id(self) -> str:
        return f"{self.org}/{self.app}"

    @property
    def prefix(self) -> str:
        """Blob name prefix of this instance's archive."""
        return f"{self.org}/{self.app}/{self.party_id}/{self.instance_guid}/"

    @property
    def key(self) -> str:
        """``org/app/partyId/instanceGuid``"""
        return f"{self.org}/{self.app}/{self.instance_id}"

    def to_dict(self) -> dict[str, str]:
        return {"org": self.org, "app": self.app, "partyId": self.party_id, "instanceGuid": self.instance_guid}

    @classmethod
    def parse(cls, org: str, app: str, instance_id: str) -> InstanceRef:
        """From ``org``, ``app`` and ``partyId/instanceGuid``; raises ValueError when malformed."""
        party, _, guid = instance_id.partition("/")
        guid = guid.lower()
        if not (_NAME.fullmatch(org) and _NAME.fullmatch(app) and _PARTY.fullmatch(party) and _GUID.fullmatch(guid)):
            raise ValueError(f"not an instance reference: {org[:64]}/{app[:64]} {instance_id[:100]!r}")
        return cls(org, app, party, guid)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceRef:
        values = []
        for name in ("org", "app", "partyId", "instanceGuid"):
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"instance reference lacks {name}" if value is None else f"instance reference: {name} is not a string")
            values.append(value)
        return cls.parse(values[0], values[1], f"{values[2]}/{values[3]}")
