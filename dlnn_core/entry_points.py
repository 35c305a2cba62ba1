"""Systems from the user's installed code: `data.system = "package.module:factory"` calls
`factory(**data.params)`, which must return a `System` and be marked with `@system_factory`, so that
a spec (stored in a shared database, run by every worker) can call only functions written for this
purpose (not, say, `os:abort`); standard-library modules are refused before anything is imported."""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import sys
from typing import Any, Callable, Mapping

from .declared import box_states
from .errors import ConfigError, Problem, shorten
from .systems import System

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
    """The refusal of `ref` as data.system, saying why."""
    return ConfigError.of([Problem("data.system", ref, why, f"{ref!r}: {why}")])


@functools.lru_cache(maxsize=64)
def _entry_point_system(ref: str, params_json: str) -> System:
    """Import, check and call the factory: a marked callable outside the standard library, whose System is consistent."""
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
