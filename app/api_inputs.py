"""Input types of the API: what both engines can store, stated in the OpenAPI schema.

The published schema is the contract, so each type both documents its limits
(pattern, bounds) and enforces them, and refuses what Pydantic's lax mode
would otherwise coerce (`false` into 0, `0` into 1970-01-01, `"1.0"` into 1).
"""

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from typing_extensions import TypeAliasType

# The columns' ranges: INTEGER is 32-bit on PostgreSQL, byte counts are BIGINT.
# The 64-bit limit is written as "below 2**63", which stays exact where a
# bound passes through a float (2**63 - 1 would become 2**63).
INT32_MAX = 2**31 - 1
INT64_LIMIT = 2**63

# PostgreSQL text cannot hold NUL: refused on both engines alike. (A pattern
# also makes Pydantic refuse lone surrogates, which neither driver can encode.)
# A URL segment holds no "/".
STORABLE_TEXT = r"^[^\x00]*$"
PATH_SEGMENT = r"^[^/\x00]+$"

# RFC 3339 date-time, the JSON schema's "date-time" format: a full date and
# time with an offset (Pydantic alone also takes dates, Unix times and no offset).
RFC3339_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
DECIMAL_INTEGER = re.compile(r"-?[0-9]+")


def require_decimal_integer(value: object) -> object:
    """A number in a URL is plain decimal digits: no spaces, "+", "_" or fraction."""
    if isinstance(value, str) and not DECIMAL_INTEGER.fullmatch(value):
        raise ValueError("expected an integer written in decimal digits")
    return value


def require_rfc3339(value: object) -> object:
    if not isinstance(value, str) or not RFC3339_DATE_TIME.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time with an offset, e.g. 2026-01-31T20:00:00Z")
    return value


def in_utc(value: datetime) -> datetime:
    """The same instant in UTC, as the columns keep every time (SQLite drops offsets)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        message = "date-time must stay within years 1 to 9999 once converted to UTC"
        raise ValueError(message) from None


def require_json_number(value: object) -> object:
    """JSON Schema counts 3 and 3.0 as integers, but neither `true` nor "3"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected an integer")
    return value


Text = Annotated[str, Field(pattern=STORABLE_TEXT)]
NonEmptyText = Annotated[str, Field(min_length=1, pattern=STORABLE_TEXT)]
Int32 = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(require_json_number)]
Int64 = Annotated[int, Field(ge=0, lt=INT64_LIMIT), BeforeValidator(require_json_number)]
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Instant = Annotated[AwareDatetime, BeforeValidator(require_rfc3339), AfterValidator(in_utc)]

# Free-form JSON whose every key and text is storable: `additionalProperties`
# false makes the key pattern binding.
CLOSED_OBJECT = Field(json_schema_extra={"additionalProperties": False})
StorableJsonValue = TypeAliasType(
    "StorableJsonValue",
    StrictBool
    | StrictInt
    | FiniteFloat
    | Text
    | None
    | list["StorableJsonValue"]
    | Annotated[dict[Text, "StorableJsonValue"], CLOSED_OBJECT],
)
StorableJsonObject = Annotated[dict[Text, StorableJsonValue], CLOSED_OBJECT]
