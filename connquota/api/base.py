"""The base every connquota API model derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ApiModel(BaseModel):
    """A model of an external shape: unknown fields are errors, names are the wire names."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    def to_wire(self) -> dict:
        """The JSON-compatible dict as it goes over the wire (no None values)."""
        return self.model_dump(mode="json", exclude_none=True)
