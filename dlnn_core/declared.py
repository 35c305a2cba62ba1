"""Systems that a spec names instead of the built-in registry: a mechanism declared as text, or a
factory in the user's installed code.

Declared (`data.system = "declared"` with a `data.declared` table)::

    coordinates = ["theta"]                 # names of q, one per degree of freedom
    angles = [true]                         # rotational coordinates (sampled over the whole circle)
    params = { m = 1.0, l = 1.0, g = 9.81, rho = 0.1 }   # values; `data.params` overrides them
    T = "0.5 * m * l**2 * theta_dot**2"     # kinetic energy T(q, q̇)
    V = "-m * g * l * cos(theta)"           # potential V(q)
    D = "0.5 * rho * theta_dot**2"          # Rayleigh dissipation D(q, q̇) ≥ 0 (optional: none)
    q_range = [[-3.14159, 3.14159]]         # the box training states are drawn from, per coordinate
    qdot_range = [[-6.0, 6.0]]
    name = "my_pendulum"                    # optional label (plots, cache file names)

The velocity of coordinate `x` is `x_dot`. Expressions are parsed with `ast` and only a whitelist is
compiled (numbers, those names, the parameters, `pi`, + − * / **, unary ±, calls to FUNCTIONS);
nothing is ever `eval`ed, since a spec is stored in a shared database and run by every worker.
L = T − V and D then give q̈ through the project's Euler–Lagrange terms, solved exactly.

Entry point (`data.system = "package.module:factory"`): `factory(**data.params)` must return a
`System`, and the factory must be marked with `@system_factory`, so that a spec can call only
functions written for this purpose (not, say, `os:abort`); standard-library modules are refused
before anything is imported."""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import json
import keyword
import math
import operator
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DeclarationError, Problem, shorten
from .fields import as_number
from .lagrangian import euler_lagrange_terms, inference_terms
from .systems import DECLARED, System

VELOCITY_SUFFIX = "_dot"  # the velocity of coordinate x is x_dot
CONSTANTS = {"pi": math.pi}
KEYS = ("name", "coordinates", "angles", "params", "T", "V", "D", "q_range", "qdot_range")
REQUIRED = ("coordinates", "angles", "T", "V", "q_range", "qdot_range")
MAX_CHARS = 4000  # per expression: mechanisms fit in far less, and parsing stays cheap
MAX_NODES = 2000
MAX_DEPTH = 100  # nesting levels; the compiled closures recurse this deep
MAX_EXPONENT = 64.0  # |p| of a constant exponent: no mechanism needs more, and 9**9**9 must not be tried
CHECK_STATES = 256  # states of the box the compiled system is checked on

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


# ----------------------------------------------------------------------------- expressions


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


def _suggest(name: str, candidates) -> str:
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
        raise _Refused(f"unknown name {name!r}{_suggest(name, [*variables, *symbols.params, *CONSTANTS])} "
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
            raise _Refused(f"{what}{_suggest(func.id, FUNCTIONS)}; known: {', '.join(sorted(FUNCTIONS))}")
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


# ----------------------------------------------------------------------------- declarations


def _number_pairs(value: Any, n: int, field: str, problems: list[tuple[str, str]]) -> list[list[float]]:
    ok = isinstance(value, (list, tuple)) and len(value) == n and all(
        isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in r)
        and r[0] < r[1] for r in value)
    if not ok:
        problems.append((field, f"{shorten(repr(value), 60)} must be one [low, high] pair (low < high) per coordinate ({n})"))
        return [[-1.0, 1.0]] * n
    return [[float(lo), float(hi)] for lo, hi in value]


def canonical_declaration(system: str, declared: Any) -> dict[str, Any] | None:
    """Check the shape of `data.declared` and return it in one canonical form (floats, lists, fixed
    key order), so equal declarations hash to one dataset cache key. None unless system = "declared"."""
    if system != DECLARED:
        if declared is not None:
            raise ConfigError("data.declared", declared, 'absent unless data.system = "declared"')
        return None
    if not isinstance(declared, Mapping):
        raise ConfigError("data.declared", declared, 'a table declaring the system (data.system = "declared"): ' + ", ".join(KEYS))
    problems: list[tuple[str, str]] = []
    p = "data.declared."
    for key in declared:
        if key not in KEYS:
            problems.append((p + str(key), f"unknown key{_suggest(str(key), KEYS)}; known: {', '.join(KEYS)}"))
    for key in REQUIRED:
        if key not in declared:
            problems.append((p + key, "missing (required)"))
    coordinates = declared.get("coordinates", [])
    if not (isinstance(coordinates, (list, tuple)) and coordinates and all(isinstance(c, str) for c in coordinates)):
        if "coordinates" in declared:  # a missing one is reported above
            problems.append((p + "coordinates", f"{shorten(repr(coordinates), 60)} must be a non-empty list of names"))
        coordinates = []
    params = declared.get("params", {})
    if not isinstance(params, Mapping):
        problems.append((p + "params", f"{shorten(repr(params), 60)} must be a table of name = number"))
        params = {}
    names: dict[str, str] = {}
    for kind, name in [("coordinate", c) for c in coordinates] + [("velocity", c + VELOCITY_SUFFIX) for c in coordinates] \
            + [("parameter", str(k)) for k in params]:
        field = p + ("params." + name if kind == "parameter" else "coordinates")
        if not name.isidentifier() or keyword.iskeyword(name):
            problems.append((field, f"{name!r} is not a valid name (letters, digits and _, not starting with a digit)"))
        elif name in FUNCTIONS or name in CONSTANTS:
            problems.append((field, f"{name!r} is the name of a {'function' if name in FUNCTIONS else 'constant'}; choose another"))
        elif name in names:
            problems.append((field, f"{name!r} is used twice (as a {names[name]} and a {kind}); "
                                    f"the velocity of coordinate x is x{VELOCITY_SUFFIX}"))
        names.setdefault(name, kind)
    values: dict[str, float] = {}
    for key, value in params.items():
        value = as_number(value)  # "1e-2" from YAML, as every field reads it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append((f"{p}params.{key}", f"{value!r} must be a finite number"))
        else:
            values[str(key)] = float(value)
    n = len(coordinates)
    angles = declared.get("angles", [False] * n)
    if n and not (isinstance(angles, (list, tuple)) and len(angles) == n and all(isinstance(a, bool) for a in angles)):
        problems.append((p + "angles", f"{shorten(repr(angles), 60)} must be one true/false per coordinate ({n}): true for an angle"))
        angles = [False] * n
    q_range = _number_pairs(declared["q_range"], n, p + "q_range", problems) if "q_range" in declared and n else None
    qdot_range = _number_pairs(declared["qdot_range"], n, p + "qdot_range", problems) if "qdot_range" in declared and n else None
    expressions = {}
    for key in ("T", "V", "D"):
        value = declared.get(key, "0" if key == "D" else None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = repr(value)  # V = 0 in TOML is an int: the constant expression "0"
        if value is not None and not isinstance(value, str):
            problems.append((p + key, f"{shorten(repr(value), 60)} must be an expression in a string"))
        expressions[key] = value
    name = declared.get("name", DECLARED)
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name)):
        problems.append((p + "name", f"{shorten(repr(name), 60)} must be a label of 1-64 letters, digits, _ . -"))
    if problems:
        raise DeclarationError(problems)
    return {"name": name, "coordinates": list(coordinates), "angles": list(angles), "params": values, **expressions,
            "q_range": q_range, "qdot_range": qdot_range}


@dataclass(frozen=True)
class DeclaredSystem(System):
    """A system built from a declaration; its D need not be quadratic, so the power loss is q̇·∂D/∂q̇."""

    def power_loss(self, q: Tensor, qdot: Tensor) -> Tensor:
        dd_dv = torch.func.grad(lambda v: self.dissipation(q.detach(), v).sum())(qdot.detach())
        return (qdot * dd_dv).sum(-1)


def _state(q: Tensor, v: Tensor, i: int) -> str:
    fmt = lambda t: "[" + ", ".join(f"{x:.3g}" for x in t[i].tolist()) + "]"  # noqa: E731
    return f"q = {fmt(q)}, q̇ = {fmt(v)}"


def declared_system(declared: Mapping[str, Any], overrides: Mapping[str, Any]) -> System:
    """Compile a canonical declaration with `data.params` overrides into a `System` (cached: equal
    declarations share one object), after checking it on states of its box: T, V and D finite,
    ∂²T/∂q̇² positive definite, D ≥ 0 and q̇·∂D/∂q̇ ≥ 0 (energy is lost, never gained)."""
    params = dict(declared["params"])
    for key, value in overrides.items():
        value = as_number(value)
        if key not in params:
            raise ConfigError(f"data.params.{key}", value, f"a parameter of the declared system: {', '.join(sorted(params)) or 'none declared'}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"data.params.{key}", value, "a finite number")
        params[key] = float(value)
    return _declared_system(json.dumps(declared, sort_keys=True), json.dumps(params, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _declared_system(declared_json: str, params_json: str) -> System:
    declared, params = json.loads(declared_json), json.loads(params_json)
    symbols = Symbols(tuple(declared["coordinates"]), params)
    p = "data.declared."
    problems: list[tuple[str, str]] = []
    exprs: dict[str, Expression] = {}
    for key in ("T", "V", "D"):
        try:
            exprs[key] = compile_expression(declared[key], symbols)
        except ValueError as exc:
            problems.append((p + key, str(exc)))
    if "V" in exprs and exprs["V"].used & set(symbols.velocities):
        problems.append((p + "V", f"the potential depends on q only; it uses {', '.join(sorted(exprs['V'].used & set(symbols.velocities)))}"))
    if problems:
        raise DeclarationError(problems)
    kinetic, potential, dissipation = exprs["T"], exprs["V"], exprs["D"]
    damped = bool(dissipation.used & set(symbols.velocities))  # a D without q̇ has ∂D/∂q̇ = 0

    def lagrangian(q: Tensor, v: Tensor) -> Tensor:
        return kinetic(q, v) - potential(q, v)

    def energy(q: Tensor, v: Tensor) -> Tensor:
        return kinetic(q, v) + potential(q, v)

    def eom(q: Tensor, v: Tensor) -> Tensor:
        """Solve ∂²L/∂q̇² q̈ = ∂L/∂q − (∂²L/∂q̇∂q) q̇ − ∂D/∂q̇ exactly (no regularization: the check
        below makes ∂²L/∂q̇² positive definite on the box); differentiable when q or q̇ require grad.
        3-4 ms per call on a CPU against 0.2 ms for a hand-written eom (double pendulum, batch 8): autograd's
        per-call cost, which trajectory integration (thousands of calls) pays once per cached dataset."""
        if q.requires_grad or v.requires_grad:
            terms = euler_lagrange_terms(lagrangian, dissipation if damped else None, q, v, method="autograd")
            return torch.linalg.solve(terms.hessian_vv, terms.rhs)
        terms, dd_dv = inference_terms(lagrangian, dissipation if damped else None, q, v)  # one backward pass fewer
        return torch.linalg.solve(terms.hessian_vv, terms.rhs if dd_dv is None else terms.rhs - dd_dv)

    n = len(symbols.coordinates)
    system = DeclaredSystem(
        name=declared["name"], n=n, angles=tuple(declared["angles"]), params=params,
        lagrangian=lagrangian, dissipation=dissipation, energy=energy, eom=eom,
        q_range=tuple(map(tuple, declared["q_range"])), qdot_range=tuple(map(tuple, declared["qdot_range"])),
    )
    _check_on_box(system, kinetic, potential, dissipation)
    return system


def box_states(system: System, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Uniform float64 states of the system's box, angles over the whole circle (as the data are drawn)."""
    rng = np.random.default_rng(seed)
    (q_lo, q_hi), (v_lo, v_hi) = np.array(system.q_range).T, np.array(system.qdot_range).T
    angles = np.array(system.angles)
    q_lo, q_hi = np.where(angles, -np.pi, q_lo), np.where(angles, np.pi, q_hi)
    q = rng.uniform(q_lo, q_hi, (count, system.n))
    v = rng.uniform(v_lo, v_hi, (count, system.n))
    return torch.from_numpy(q), torch.from_numpy(v)


def _check_on_box(system: System, kinetic: Expression, potential: Expression, dissipation: Expression) -> None:
    p = "data.declared."
    q, v = box_states(system, CHECK_STATES)
    problems: list[tuple[str, str]] = []
    for key, expr in (("T", kinetic), ("V", potential), ("D", dissipation)):
        value = expr(q, v)
        bad = (~torch.isfinite(value)).nonzero()
        if len(bad):
            i = int(bad[0])
            problems.append((p + key, f"{shorten(expr.text, 60)!r} is {value[i].item()} at {_state(q, v, i)} (a state of the box)"))
    if problems:
        raise DeclarationError(problems)
    # + 0·|q̇|²: a T linear in q̇ has a constant ∂L/∂q̇, which autograd cannot differentiate again; this keeps it in the graph
    h = euler_lagrange_terms(lambda q, v: system.lagrangian(q, v) + 0.0 * v.square().sum(-1), None, q, v).hessian_vv.detach()
    eig = torch.linalg.eigvalsh(h)
    scale = eig.abs().max(dim=-1).values.clamp_min(1e-300)
    bad = (eig[:, 0] <= 1e-10 * scale).nonzero()
    if len(bad):
        i = int(bad[0])
        problems.append((p + "T", f"∂²T/∂q̇² is not positive definite at {_state(q, v, i)} (smallest eigenvalue {eig[i, 0].item():.3g}): "
                                  "T must be a positive definite quadratic form in the velocities, or q̈ is not determined"))
    d = dissipation(q, v)
    power = system.power_loss(q, v)
    tol = 1e-12 * (1 + d.abs().max().item())
    for values, what in ((d, "D"), (power, "q̇·∂D/∂q̇ (the power lost)")):
        bad = (values < -tol).nonzero()
        if len(bad):
            i = int(bad[0])
            problems.append((p + "D", f"{what} is {values[i].item():.3g} < 0 at {_state(q, v, i)}: "
                                      "a dissipation function is ≥ 0 and removes energy (negative damping pumps it in)"))
            break
    if problems:
        raise DeclarationError(problems)
    a = system.eom(q, v)
    bad = (~torch.isfinite(a).all(-1)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DeclarationError([(p + "T", f"the equations of motion give a non-finite q̈ at {_state(q, v, i)}")])


# ----------------------------------------------------------------------------- entry points

ENTRY_POINT = re.compile(r"^(?P<module>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")
_MARK = "__dlnn_system_factory__"


def system_factory(fn: Callable[..., System]) -> Callable[..., System]:
    """Mark `fn(**params) -> System` as a factory a spec may name as `data.system = "package.module:fn"`."""
    setattr(fn, _MARK, True)
    return fn


def entry_point_system(ref: str, params: Mapping[str, Any]) -> System:
    """`factory(**params)` for `ref` = "package.module:factory" (cached per ref and params), checked to
    be a marked factory that returns a consistent System."""
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"data.params.{key}", value, "a finite number")
    return _entry_point_system(ref, json.dumps({k: float(v) for k, v in params.items()}, sort_keys=True))


def _refuse(ref: str, why: str) -> ConfigError:
    return ConfigError.of([Problem("data.system", ref, why, f"{ref!r}: {why}")])


@functools.lru_cache(maxsize=64)
def _entry_point_system(ref: str, params_json: str) -> System:
    params = json.loads(params_json)
    match = ENTRY_POINT.match(ref)
    if match is None:
        raise _refuse(ref, "an entry point is written 'package.module:factory'")
    module_name, attr = match["module"], match["attr"]
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise _refuse(ref, f"{top!r} is a standard-library module; a system factory lives in your own package")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _refuse(ref, f"cannot import {module_name!r} ({type(exc).__name__}: {exc}); is the package installed "
                           "on this machine (and on every worker)?") from None
    except Exception as exc:  # the module's own code failed while importing
        raise _refuse(ref, f"importing {module_name!r} failed: {type(exc).__name__}: {shorten(str(exc), 200)}") from None
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise _refuse(ref, f"module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory) or getattr(factory, "__dict__", {}).get(_MARK) is not True:  # set by the decorator, not answered by a __getattr__
        raise _refuse(ref, f"{attr} is not marked as a system factory: decorate it with @dlnn_core.system_factory "
                           "(a spec stored in a shared database may call only functions written to build a System)")
    try:
        system = factory(**params)
    except TypeError as exc:
        raise ConfigError("data.params", params, f"parameters {ref} accepts ({exc})") from None
    except ConfigError:
        raise
    except Exception as exc:
        raise _refuse(ref, f"the factory raised {type(exc).__name__}: {shorten(str(exc), 200)}") from None
    if not isinstance(system, System):
        raise _refuse(ref, f"the factory returned {type(system).__name__}, expected a dlnn_core.System")
    n = system.n
    shapes = [("angles", system.angles, n), ("q_range", system.q_range, n), ("qdot_range", system.qdot_range, n)]
    for name, value, length in shapes:
        if len(value) != length:
            raise _refuse(ref, f"the System's {name} has {len(value)} entries for n = {n} coordinates")
    q, v = box_states(system, 4)
    try:
        a = system.eom(q, v)
    except Exception as exc:
        raise _refuse(ref, f"the System's eom fails on states of its box: {type(exc).__name__}: {shorten(str(exc), 200)}") from None
    if tuple(a.shape) != (4, n):
        raise _refuse(ref, f"the System's eom returns shape {tuple(a.shape)} for 4 states; expected (4, {n})")
    return system
