"""Value expressions for unit conversion and scaling (`${@t * 1.8 + 32}`, `round(h / 100, 2)`), evaluated safely.

The text is parsed with `ast` and evaluated by walking a whitelist of nodes: numbers, strings,
attribute references, `+ - * / // % **`, unary minus, parentheses and a few functions. No
`eval`, no attribute access, no calls outside the whitelist.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message names the reason."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "round": round,
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "number": float,
    "int": int,
    "str": str,
}
"""The functions an expression may call."""
_MAX_EXPONENT = 1000


def _source(expression: str) -> str:
    """The legacy IoT Agent form `${@t * 1.8 + 32}` as plain arithmetic: `t * 1.8 + 32`."""
    text = expression.strip()
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return text.replace("@", "")


@lru_cache(maxsize=1024)
def compile_expression(expression: str) -> ast.expr:
    """The checked syntax tree of an expression; ExpressionError when it uses anything outside the whitelist."""
    try:
        tree = ast.parse(_source(expression), mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"expression {expression!r} does not parse: {error.msg}") from error
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise ExpressionError(f"expression {expression!r} calls something other than {sorted(FUNCTIONS)}")
        elif not isinstance(
            node,
            ast.Constant | ast.Name | ast.Load | ast.BinOp | ast.UnaryOp | ast.operator | ast.unaryop,
        ):
            raise ExpressionError(f"expression {expression!r} uses {type(node).__name__}, which is not allowed")
        elif isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            raise ExpressionError(f"expression {expression!r} uses an operator that is not allowed")
        elif isinstance(node, ast.UnaryOp) and type(node.op) not in _UNARY:
            raise ExpressionError(f"expression {expression!r} uses an operator that is not allowed")
        elif isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str):
            raise ExpressionError(f"expression {expression!r} holds a constant that is not a number or text")
    return tree


def _evaluate(node: ast.expr, variables: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in variables:
            raise ExpressionError(f"the measure has no attribute {node.id!r}")
        return variables[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, variables), _evaluate(node.right, variables)
        if not isinstance(node.op, ast.Add) and (isinstance(left, str) or isinstance(right, str)):
            # Text only concatenates: `"ab" * 10**9` must not build a gigabyte string.
            raise ExpressionError(f"arithmetic on text ({left!r}, {right!r}) failed: needs numbers")
        if isinstance(node.op, ast.Pow) and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise ExpressionError(f"exponent {right} is too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, variables))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return FUNCTIONS[node.func.id](*(_evaluate(arg, variables) for arg in node.args))
    raise ExpressionError(f"cannot evaluate {type(node).__name__}")  # unreachable after compile_expression


def evaluate_expression(expression: str, variables: Mapping[str, Any]) -> Any:
    """The value of `expression` with attribute references taken from `variables`.

    Raises ExpressionError for syntax outside the whitelist, unknown attributes, wrong operand
    types, division by zero or results that are not finite numbers.
    """
    tree = compile_expression(expression)
    try:
        result = _evaluate(tree, variables)
    except ExpressionError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as error:
        raise ExpressionError(f"expression {expression!r} failed: {error}") from error
    if isinstance(result, float) and not math.isfinite(result):
        raise ExpressionError(f"expression {expression!r} gave {result}")
    return result
