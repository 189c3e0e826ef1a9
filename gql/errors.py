"""Errors the API returns: each with a stable `extensions.code`, none with internals in it.

Codes are given where an error arises, never read back from its wording: parse errors by the parse
phase (or the token limit), validation errors by the rule that reported them, variable errors by where
they point (a variable definition), our own errors by their type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from graphql import (
    ASTValidationRule,
    EnumValueNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLSyntaxError,
    NoUndefinedVariablesRule,
    NoUnusedVariablesRule,
    ProvidedRequiredArgumentsRule,
    ValidationContext,
    ValuesOfCorrectTypeRule,
    VariableDefinitionNode,
    VariablesAreInputTypesRule,
    VariablesInAllowedPositionRule,
    get_named_type,
)
from graphql.pyutils import inspect
from strawberry.extensions import SchemaExtension

from gql.logs import request_id

BAD_USER_INPUT = "BAD_USER_INPUT"
# A request no GraphQL server could read (gql/protocol.py has the other HTTP-level codes).
BAD_REQUEST = "BAD_REQUEST"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
INTERNAL = "INTERNAL_SERVER_ERROR"
# A computation failed and no earlier result could stand in (docs/caching.md, "Fail-safe").
COMPUTATION_FAILED = "COMPUTATION_FAILED"
REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"


# What a message echoes of the client's input is cut to this many characters.
ECHO_LIMIT = 60


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """A value of the client's as a message shows it: JSON (a number unquoted, an object as JSON), cut to `limit`."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


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


def code_of(error: GraphQLError) -> str | None:
    return (error.extensions or {}).get("code")


def _with_code(error: GraphQLError, code: str) -> None:
    if code_of(error) is None:
        error.extensions = {**(error.extensions or {}), "code": code}


class _CodingContext:
    """A validation context whose `report_error` gives each error the code of the rule reporting it."""

    def __init__(self, context: ValidationContext, code: str) -> None:
        self._context = context
        self._code = code

    def report_error(self, error: GraphQLError) -> None:
        _with_code(error, self._code)
        if self._code == BAD_USER_INPUT:
            _name_allowed_literals(error, self._context)
        self._context.report_error(error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def coded_rule(rule: type[ASTValidationRule], code: str) -> type[ASTValidationRule]:
    """`rule`, with `code` on every error it reports (also those reported through `context.report_error`)."""

    class Coded(rule):  # type: ignore[valid-type, misc]  # a class made from a variable base
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(_CodingContext(context, code))

    Coded.__name__ = Coded.__qualname__ = f"Coded{rule.__name__}"
    return Coded


# Validation rules whose errors are wrong argument or variable values, the client's input.
_BAD_INPUT_RULES = {
    ValuesOfCorrectTypeRule, ProvidedRequiredArgumentsRule, NoUndefinedVariablesRule, NoUnusedVariablesRule,
    VariablesAreInputTypesRule, VariablesInAllowedPositionRule,
}
_CODED_BAD_INPUT_RULES = {rule: coded_rule(rule, BAD_USER_INPUT) for rule in _BAD_INPUT_RULES}


def _allowed(enum_type: Any, value: object) -> str | None:
    """'allowed: A, B' when `value` is a name that is not one of the enum's values."""
    if isinstance(enum_type, GraphQLEnumType) and isinstance(value, str) and value not in enum_type.values:
        return f"allowed: {', '.join(enum_type.values)}"
    return None


def _name_allowed_literals(error: GraphQLError, context: ValidationContext) -> None:
    """graphql-core names a wrong enum literal but not the right ones; say what is allowed."""
    node = error.nodes[0] if error.nodes else None
    if isinstance(node, EnumValueNode):
        allowed = _allowed(get_named_type(context.get_input_type()), node.value)
        if allowed is not None:
            error.message = f"{error.message.rstrip('.')}; {allowed}"


def _show_as_json(error: GraphQLError, value: object) -> None:
    """graphql-core shows a variable's wrong value as Python writes it ({'a': 1}, True); show it as the JSON sent."""
    parts = [value]
    for part in parts:  # the value, then what it holds, widest first
        if isinstance(part, (dict, list, bool)) or part is None:
            written = inspect(part)
            if written in error.message:
                error.message = error.message.replace(written, shown(part))
                return
            parts.extend(part.values() if isinstance(part, dict) else part if isinstance(part, list) else ())


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

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        context.validation_rules = tuple(_CODED_BAD_INPUT_RULES.get(rule, rule) for rule in context.validation_rules)
        yield

    def on_operation(self) -> Iterator[None]:
        yield
        self._code(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        # A subscription sends each result as it comes (and its errors before any), while on_operation
        # ends only with the whole stream.
        self._code(result)
        yield

    def _code(self, result: Any) -> None:
        errors = getattr(result, "errors", None)
        if result is None or not errors:
            return
        processed = []
        for error in errors:
            if is_unexpected(error):
                processed.append(masked(error))
                continue
            if code_of(error) is None:
                # Left without one: syntax errors, validation errors of the other rules, and errors of
                # execution before any resolver ran. A variable's value that cannot be coerced points at
                # the variable's definition; the rest (no operation to run) do not.
                variable = next((n for n in error.nodes or () if isinstance(n, VariableDefinitionNode)), None)
                if isinstance(error, GraphQLSyntaxError):
                    _with_code(error, PARSE_FAILED)
                elif variable is not None:
                    _with_code(error, BAD_USER_INPUT)
                    self._name_allowed_value(error, variable)
                    _show_as_json(error, (self.execution_context.variables or {}).get(variable.variable.name.value))
                else:
                    _with_code(error, VALIDATION_FAILED)
            processed.append(error)
        result.errors = processed

    def _name_allowed_value(self, error: GraphQLError, variable: VariableDefinitionNode) -> None:
        """Say which values are allowed when a variable holds an unknown enum value."""
        named = variable.type
        while not hasattr(named, "name"):
            named = named.type  # type: ignore[attr-defined]  # a list or non-null wrapper
        enum_type = self.execution_context.schema.get_type_by_name(named.name.value)
        values = getattr(enum_type, "values", None)
        value = (self.execution_context.variables or {}).get(variable.variable.name.value)
        if values and isinstance(value, str) and value not in {v.name for v in values}:
            error.message = f"{error.message.rstrip('.')}; allowed: {', '.join(v.name for v in values)}"
