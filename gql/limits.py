"""Cost limits, checked on the parsed operation before any resolver, computation or Redis call."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    ASTValidationRule,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSyntaxError,
    InlineFragmentNode,
    Lexer,
    ListValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    Source,
    TokenKind,
    ValidationContext,
    VariableNode,
)
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter, SchemaExtension

from gql.errors import QUERY_TOO_COMPLEX, QueryTooComplexError, coded_rule


def cached_field_nodes(
    selection_set: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode], names: frozenset[str]
) -> Iterator[FieldNode]:
    """Every invocation of the named fields, counting a fragment once per place it is spread."""
    if selection_set is None:
        return
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value in names:
                yield selection
            yield from cached_field_nodes(selection.selection_set, fragments, names)
        elif isinstance(selection, InlineFragmentNode):
            yield from cached_field_nodes(selection.selection_set, fragments, names)
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:  # validation has already rejected unknown and cyclic fragments
                yield from cached_field_nodes(fragment.selection_set, fragments, names)


def _list_length(node: Any, variables: Mapping[str, Any]) -> int:
    if isinstance(node, ListValueNode):
        return len(node.values)
    if isinstance(node, VariableNode):
        value = variables.get(node.name.value)
        return len(value) if isinstance(value, list) else 0
    return 0


class CostLimits(SchemaExtension):
    """Refuse an operation that asks for too many cached fields, or too many codes in one of them."""

    def __init__(self, *, cached_fields: frozenset[str], max_cached_fields: int, max_codes: int) -> None:
        self.cached_fields = cached_fields
        self.max_cached_fields = max_cached_fields
        self.max_codes = max_codes

    def on_execute(self) -> Iterator[None]:
        problem = self._problem()
        if problem is not None:
            # A result set before execution makes Strawberry skip execution altogether.
            self.execution_context.result = ExecutionResult(data=None, errors=[QueryTooComplexError(problem)])
        yield

    def _problem(self) -> str | None:
        context = self.execution_context
        document = context.graphql_document
        if document is None:
            return None
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if context.operation_name:
            operations = [o for o in operations if o.name and o.name.value == context.operation_name]
        variables = context.variables or {}
        for operation in operations[:1]:
            fields = list(cached_field_nodes(operation.selection_set, fragments, self.cached_fields))
            if len(fields) > self.max_cached_fields:
                return (
                    f"this operation asks for {len(fields)} cached fields ({', '.join(sorted(self.cached_fields))}); "
                    f"the limit is {self.max_cached_fields} per operation: split it into several requests"
                )
            for field in fields:
                for argument in field.arguments or ():
                    if argument.name.value == "codes":
                        count = _list_length(argument.value, variables)
                        if count > self.max_codes:
                            return f"{field.name.value} asks for {count} codes; the limit is {self.max_codes} per field"
        return None


class TokenLimit(MaxTokensLimiter):
    """Strawberry's token limit (graphql-core's parser stops at it), with its own code."""

    def on_parse(self) -> Iterator[None]:
        yield
        context = self.execution_context
        for error in context.pre_execution_errors or ():
            if isinstance(error, GraphQLSyntaxError) and _stopped_at_limit(context.query or "", error, self.max_token_count):
                error.extensions = {**(error.extensions or {}), "code": QUERY_TOO_COMPLEX}

    def on_stream_result(self, result: Any) -> Iterator[None]:
        # Over the WebSocket a syntax error closes the whole connection (4400, graphql-transport-ws); a document
        # over the limit is refused like any other limit instead: an `error` for that subscribe alone.
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = [_not_a_syntax_error(error) for error in errors]
        yield


def _not_a_syntax_error(error: GraphQLError) -> GraphQLError:
    if isinstance(error, GraphQLSyntaxError) and (error.extensions or {}).get("code") == QUERY_TOO_COMPLEX:
        return GraphQLError(error.message, source=error.source, positions=error.positions, extensions=error.extensions)
    return error


def _stopped_at_limit(query: str, error: GraphQLError, max_tokens: int) -> bool:
    """Whether the parser stopped at the token past the limit (rather than at a syntax error before it)."""
    position = next(iter(error.positions)) if error.positions else len(query)
    lexer, count = Lexer(Source(query)), 0
    try:
        token = lexer.advance()  # comments are skipped, as the parser's count skips them
        while token.kind is not TokenKind.EOF and token.start <= position:
            count += 1
            if count > max_tokens:
                return True
            token = lexer.advance()
    except GraphQLError:
        return False  # a lexical error before the limit
    return False


class AliasLimit(MaxAliasesLimiter):
    def __init__(self, max_alias_count: int) -> None:
        super().__init__(max_alias_count)
        self.validation_rules = [coded_rule(rule, QUERY_TOO_COMPLEX) for rule in self.validation_rules]


class DepthLimit(QueryDepthLimiter):
    def __init__(self, max_depth: int) -> None:
        super().__init__(max_depth)
        self.validation_rules = [_skipping_unknown_fragments(coded_rule(rule, QUERY_TOO_COMPLEX)) for rule in self.validation_rules]


def _skipping_unknown_fragments(rule: type[ASTValidationRule]) -> type[ASTValidationRule]:
    """Strawberry's depth rule looks every spread up in the document's fragments (a KeyError for one that is not
    there); such a document is invalid anyway, and KnownFragmentNamesRule says why."""

    class Skipping(rule):  # type: ignore[valid-type, misc]  # a class made from a variable base
        def __init__(self, context: ValidationContext) -> None:
            try:
                super().__init__(context)
            except KeyError:
                ASTValidationRule.__init__(self, context)

    Skipping.__name__ = Skipping.__qualname__ = rule.__name__
    return Skipping


def limit_extensions(
    *, max_aliases: int, max_depth: int, max_tokens: int, max_cached_fields: int, max_codes: int, cached_fields: frozenset[str]
) -> list:
    """Strawberry's own limiters for aliases, depth and tokens, and ours for what is specific to this API."""
    return [
        lambda: TokenLimit(max_token_count=max_tokens),
        lambda: AliasLimit(max_alias_count=max_aliases),
        lambda: DepthLimit(max_depth=max_depth),
        lambda: CostLimits(cached_fields=cached_fields, max_cached_fields=max_cached_fields, max_codes=max_codes),
    ]
