"""The expressions of a declared system (T, V, D as text), parsed with `ast` and compiled from a
whitelist only: numbers, the coordinates and their velocities (`x_dot`), the parameters, `pi`,
+ − * / **, unary ±, and calls to FUNCTIONS. Nothing is ever `eval`ed, since a spec is stored in a
shared database and run by every worker; size, depth and constant exponents are bounded."""

from __future__ import annotations

import ast
import difflib
import math
import operator
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import shorten

VELOCITY_SUFFIX = "_dot"  # the velocity of coordinate x is x_dot
CONSTANTS = {"pi": math.pi}
MAX_CHARS = 4000  # per expression: mechanisms fit in far less, and parsing stays cheap
MAX_NODES = 2000
MAX_DEPTH = 100  # nesting levels; the compiled closures recurse this deep
MAX_EXPONENT = 64.0  # |p| of a constant exponent: no mechanism needs more, and 9**9**9 must not be tried

Value = Tensor | float


def _stable_logcosh(x: Tensor) -> Tensor:
    return torch.logaddexp(x, -x) - math.log(2.0)


def _math_logcosh(x: float) -> float:
    return abs(x) + math.log1p(math.exp(-2 * abs(x))) - math.log(2.0)


@dataclass(frozen=True)
class Function:
    """A function an expression may call: its torch form, its float form (constant folding) and arity."""

    torch_fn: Callable[..., Tensor]
    math_fn: Callable[..., float]
    arity: int = 1


FUNCTIONS: dict[str, Function] = {
    "sin": Function(torch.sin, math.sin),
    "cos": Function(torch.cos, math.cos),
    "tan": Function(torch.tan, math.tan),
    "asin": Function(torch.asin, math.asin),
    "acos": Function(torch.acos, math.acos),
    "atan": Function(torch.atan, math.atan),
    "atan2": Function(torch.atan2, math.atan2, 2),
    "sinh": Function(torch.sinh, math.sinh),
    "cosh": Function(torch.cosh, math.cosh),
    "tanh": Function(torch.tanh, math.tanh),
    "exp": Function(torch.exp, math.exp),
    "log": Function(torch.log, math.log),
    "sqrt": Function(torch.sqrt, math.sqrt),
    "abs": Function(torch.abs, abs),
    "sign": Function(torch.sign, lambda x: float(np.sign(x))),
    "logcosh": Function(_stable_logcosh, _math_logcosh),  # log(cosh(x)) without overflow; d/dx = tanh(x)
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_REFUSED = {  # friendly names for the syntax a spec most often tries
    ast.Attribute: "attribute access", ast.Subscript: "subscripts", ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.Compare: "comparisons", ast.BoolOp: "and/or", ast.IfExp: "if/else",
    ast.List: "lists", ast.Tuple: "tuples", ast.Dict: "dicts", ast.Set: "sets", ast.Starred: "starred arguments",
    ast.NamedExpr: "assignments (:=)", ast.JoinedStr: "strings", ast.Await: "await", ast.Yield: "yield",
}


@dataclass(frozen=True)
class Symbols:
    """The names an expression may use: coordinates, their velocities, parameters (with values), constants."""

    coordinates: tuple[str, ...]
    params: Mapping[str, float]

    @property
    def velocities(self) -> tuple[str, ...]:
        return tuple(c + VELOCITY_SUFFIX for c in self.coordinates)

    def known(self) -> str:
        parts = [f"coordinates {', '.join(self.coordinates)}", f"velocities {', '.join(self.velocities)}"]
        if self.params:
            parts.append(f"parameters {', '.join(sorted(self.params))}")
        parts.append(f"constant{'s' * (len(CONSTANTS) > 1)} {', '.join(CONSTANTS)}")
        return "; ".join(parts)


class _Refused(Exception):
    """An expression outside the whitelist; its message says what and why."""


Compiled = Callable[[dict[str, Tensor]], Value]


def suggest_name(name: str, candidates) -> str:
    """' (did you mean X?)' for the candidate nearest to `name`, or ''."""
    near = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _check_size(tree: ast.AST) -> None:
    """Refuse expressions too large or too deeply nested to compile and evaluate cheaply."""
    nodes, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} terms")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _fold(op: Callable[..., float], args: list[float], text: str) -> float:
    """Evaluate a constant subexpression in floats; overflow, division by zero and domain errors refuse it."""
    try:
        value = op(*args)
    except (OverflowError, ZeroDivisionError, ValueError) as exc:
        raise _Refused(f"{text} cannot be evaluated ({exc})") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Refused(f"{text} is not a finite real number")
    return float(value)


def _as_tensor(value: Value, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _compile_node(node: ast.AST, symbols: Symbols, variables: set[str], used: set[str]) -> Compiled | float:
    """A float for a constant subexpression (parameters are constants), otherwise env -> Tensor."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise _Refused(f"{node.value!r} is not a number; only numbers may appear as literals")
        return _fold(float, [node.value], shorten(repr(node.value), 40))
    if isinstance(node, ast.Name):
        name = node.id
        used.add(name)
        if name in variables:
            return lambda env: env[name]
        if name in symbols.params:
            return float(symbols.params[name])
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise _Refused(f"{name!r} is a function: call it, e.g. {name}(x)")
        raise _Refused(f"unknown name {name!r}{suggest_name(name, [*variables, *symbols.params, *CONSTANTS])} "
                       f"(known: {symbols.known()})")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op = _UNARY[type(node.op)]
        inner = _compile_node(node.operand, symbols, variables, used)
        if isinstance(inner, float):
            return _fold(op, [inner], ast.unparse(node))
        return lambda env: op(inner(env))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left = _compile_node(node.left, symbols, variables, used)
        right = _compile_node(node.right, symbols, variables, used)
        if isinstance(node.op, ast.Pow) and isinstance(right, float) and abs(right) > MAX_EXPONENT:
            raise _Refused(f"the exponent of {shorten(ast.unparse(node), 60)} is {right:g}; at most {MAX_EXPONENT:g} in magnitude")
        if isinstance(left, float) and isinstance(right, float):
            return _fold(op, [left, right], shorten(ast.unparse(node), 60))
        if isinstance(left, float):
            return lambda env: op(left, right(env))
        if isinstance(right, float):
            return lambda env: op(left(env), right)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.BinOp):
        raise _Refused(f"the operator {type(node.op).__name__} in {shorten(ast.unparse(node), 60)} is not allowed; use + - * / **")
    if isinstance(node, ast.UnaryOp):
        raise _Refused(f"the operator {type(node.op).__name__} is not allowed; use unary minus")
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute):
            raise _Refused(f"attribute access ({shorten(ast.unparse(func), 40)}) is not allowed; call functions by name: "
                           f"{', '.join(sorted(FUNCTIONS))}")
        if not isinstance(func, ast.Name):
            raise _Refused(f"only calls of named functions are allowed ({shorten(ast.unparse(func), 40)}(...) is not); "
                           f"known: {', '.join(sorted(FUNCTIONS))}")
        info = FUNCTIONS.get(func.id)
        if info is None:
            what = f"{func.id!r} is not a function" if func.id in variables or func.id in symbols.params else f"unknown function {func.id!r}"
            raise _Refused(f"{what}{suggest_name(func.id, FUNCTIONS)}; known: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords or len(node.args) != info.arity:
            raise _Refused(f"{func.id}() takes {info.arity} positional argument{'s' * (info.arity > 1)}")
        args = [_compile_node(arg, symbols, variables, used) for arg in node.args]
        if all(isinstance(a, float) for a in args):
            return _fold(info.math_fn, args, shorten(ast.unparse(node), 60))
        fn = info.torch_fn
        if info.arity == 1:
            (arg,) = args
            return lambda env: fn(arg(env))

        def call(env: dict[str, Tensor]) -> Tensor:
            values = [a if isinstance(a, float) else a(env) for a in args]
            like = next(v for v in values if isinstance(v, Tensor))
            return fn(*(_as_tensor(v, like) for v in values))

        return call
    what = _REFUSED.get(type(node), type(node).__name__)
    raise _Refused(f"{what} ({shorten(ast.unparse(node), 40)}) not allowed; an expression may use numbers, "
                   f"names, + - * / **, unary minus and calls to {', '.join(sorted(FUNCTIONS))}")


@dataclass(frozen=True)
class Expression:
    """A compiled expression: (q, q̇) [B, n] -> [B], and the names it uses."""

    text: str
    used: frozenset[str]
    fn: Callable[[Tensor, Tensor], Tensor]

    def __call__(self, q: Tensor, qdot: Tensor) -> Tensor:
        return self.fn(q, qdot)


def compile_expression(text: str, symbols: Symbols) -> Expression:
    """Parse `text` with `ast` and compile the whitelisted tree into a torch function; anything else
    raises ValueError saying what is not allowed (the caller adds the field)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an expression; write it as a string")
    if len(text) > MAX_CHARS:
        raise ValueError(f"the expression is {len(text)} characters long; at most {MAX_CHARS}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
        _check_size(tree)
        variables = {*symbols.coordinates, *symbols.velocities}
        used: set[str] = set()
        body = _compile_node(tree.body, symbols, variables, used)
    except SyntaxError as exc:
        raise ValueError(f"not a valid expression: {exc.msg} (column {exc.offset}) in {shorten(text, 60)!r}") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"nested too deeply: {shorten(text, 60)!r}") from None
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    index = {name: i for i, name in enumerate(symbols.coordinates)}

    def fn(q: Tensor, qdot: Tensor) -> Tensor:
        if isinstance(body, float):
            return torch.full(q.shape[:1], body, dtype=q.dtype, device=q.device)
        env = {name: q[:, i] for name, i in index.items()}
        env.update({name + VELOCITY_SUFFIX: qdot[:, i] for name, i in index.items()})
        return body(env).expand(q.shape[0])  # a term of one coordinate only is already [B]

    return Expression(text, frozenset(used), fn)
