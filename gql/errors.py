"""Errors the API returns: each with a stable `extensions.code`, none with internals in it."""

from __future__ import annotations

import re
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from gql.logs import request_id

BAD_USER_INPUT = "BAD_USER_INPUT"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
INTERNAL = "INTERNAL_SERVER_ERROR"
# A computation failed and no earlier result could stand in (docs/caching.md, "Fail-safe").
COMPUTATION_FAILED = "COMPUTATION_FAILED"


class ApiError(GraphQLError):
    """An error meant for the client: its message says what was wrong and what is allowed."""

    code = BAD_USER_INPUT

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message, extensions={"code": code or self.code})


class UserInputError(ApiError):
    code = BAD_USER_INPUT


class AuthError(ApiError):
    code = UNAUTHENTICATED


class QueryTooComplexError(ApiError):
    code = QUERY_TOO_COMPLEX


def is_unexpected(error: GraphQLError) -> bool:
    """An exception from our code rather than a parse, validation or API error."""
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError)


# Errors graphql-core and Strawberry's limiters raise, told apart by their (stable) wording.
_TOO_COMPLEX = re.compile(r"aliases found\. Allowed|exceeds maximum operation depth|Document contains more than \d+ tokens")
_BAD_INPUT = re.compile(
    r"^(Variable '\$|Expected value of type|Argument '.*' of (non-null )?type|Field '.*' argument '.*' of type)"
    r"|cannot represent|does not exist in '\w+' enum"
)
_UNKNOWN_ENUM_VALUE = re.compile(r"does not exist in '(\w+)' enum\.?")


def code_for(error: GraphQLError) -> str:
    if is_unexpected(error):
        return INTERNAL
    if _TOO_COMPLEX.search(error.message):
        return QUERY_TOO_COMPLEX
    if error.message.startswith("Syntax Error"):
        return PARSE_FAILED
    if _BAD_INPUT.search(error.message):
        return BAD_USER_INPUT
    return VALIDATION_FAILED


def masked(error: GraphQLError) -> GraphQLError:
    rid = request_id.get()
    return GraphQLError(
        f"Internal error; the server log has the details under request id {rid}",
        nodes=error.nodes, source=error.source, positions=error.positions, path=error.path,
        extensions={"code": INTERNAL, "requestId": rid},
    )


class ErrorPolicy(SchemaExtension):
    """Give every error a code and replace unexpected ones by a masked 'Internal error'.

    The originals (with tracebacks) are logged by the schema before this runs.
    """

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if not errors:
            return
        processed = []
        for error in errors:
            if is_unexpected(error):
                processed.append(masked(error))
                continue
            if not (error.extensions or {}).get("code"):
                error.extensions = {**(error.extensions or {}), "code": code_for(error)}
            processed.append(self._with_allowed_values(error))
        result.errors = processed

    def _with_allowed_values(self, error: GraphQLError) -> GraphQLError:
        """graphql-core names a wrong enum value but not the right ones; say what is allowed."""
        match = _UNKNOWN_ENUM_VALUE.search(error.message)
        enum_type = match and self.execution_context.schema._schema.get_type(match.group(1))
        values = getattr(enum_type, "values", None)
        if values:
            error.message = f"{error.message.rstrip('.')}; allowed: {', '.join(values)}"
        return error
