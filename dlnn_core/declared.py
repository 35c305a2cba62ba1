"""Systems that a spec declares as text instead of naming the built-in registry (a factory in the
user's installed code is entry_points.py's).

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
compiled (expressions.py: numbers, those names, the parameters, `pi`, + − * / **, unary ±, calls to
FUNCTIONS); nothing is ever `eval`ed, since a spec is stored in a shared database and run by every worker.
L = T − V and D then give q̈ through the project's Euler–Lagrange terms, solved exactly."""

from __future__ import annotations

import functools
import json
import keyword
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DeclarationError, shorten
from .expressions import CONSTANTS, FUNCTIONS, VELOCITY_SUFFIX, Expression, Symbols, compile_expression, suggest_name
from .fields import as_number
from .lagrangian import euler_lagrange_terms, inference_terms
from .systems import DECLARED, System

KEYS = ("name", "coordinates", "angles", "params", "T", "V", "D", "q_range", "qdot_range")
REQUIRED = ("coordinates", "angles", "T", "V", "q_range", "qdot_range")
CHECK_STATES = 256  # states of the box the compiled system is checked on


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
            problems.append((p + str(key), f"unknown key{suggest_name(str(key), KEYS)}; known: {', '.join(KEYS)}"))
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
