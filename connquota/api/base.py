"""The base every connquota API model derives from."""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from connquota.api.rules import (
    LIST_MAP_KEYS,
    LIST_TYPE,
    UNIQUE_KEYS,
    VALIDATIONS,
    Rule,
    has_duplicates,
)


def _add_rules_to_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Render a model's cross-field RULES into its JSON schema as x-kubernetes-validations."""
    rules: tuple[Rule, ...] = getattr(cls, "RULES", ())
    if rules:
        schema[VALIDATIONS] = [rule.to_validation() for rule in rules]


def _names(value: object) -> tuple[str, ...]:
    """A list of field names from a schema extra."""
    assert isinstance(value, (list, tuple)), value
    return tuple(str(v) for v in value)


@cache
def _unique_fields(cls: type[BaseModel]) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """(field, map keys) of list fields declared unique; keys None for a set of scalars."""
    out: list[tuple[str, tuple[str, ...] | None]] = []
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict):
            continue
        if UNIQUE_KEYS in extra:
            out.append((name, _names(extra[UNIQUE_KEYS])))
        elif extra.get(LIST_TYPE) == "map":
            out.append((name, _names(extra[LIST_MAP_KEYS])))
        elif extra.get(LIST_TYPE) == "set":
            out.append((name, None))
    return tuple(out)


def _uniqueness_errors(model: BaseModel) -> list[str]:
    errors = []
    for field, keys in _unique_fields(type(model)):
        items = getattr(model, field) or []
        if keys is None:
            duplicate = has_duplicates(list(items))
            if duplicate is not None:
                errors.append(f"{field}: duplicate value {duplicate!r}; entries must be unique")
            continue
        values = [tuple(str(getattr(item, key)) for key in keys) for item in items]
        duplicate = has_duplicates(values)
        if duplicate is not None:
            shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, duplicate, strict=True))
            errors.append(
                f"{field}: duplicate entry ({shown}); {'/'.join(keys)} must be unique in {field}"
            )
    return errors


class ApiModel(BaseModel):
    """A model of an external shape: unknown fields are errors, names are the wire names.

    Subclasses declare cross-field `RULES` (see connquota.api.rules); they are checked here and
    rendered into the CRDs as CEL, so the models and the API server reject the same objects.
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
        json_schema_extra=_add_rules_to_schema,
    )

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _enforce_rules(self) -> Any:
        if not self.RULES and not _unique_fields(type(self)):
            return self
        errors = _uniqueness_errors(self)
        errors += [rule.message for rule in self.RULES if not rule.check(self)]
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def to_wire(self) -> dict[str, Any]:
        """The JSON-compatible dict as it goes over the wire (no None values)."""
        return self.model_dump(mode="json", exclude_none=True)
