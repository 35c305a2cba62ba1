"""Dotted paths over nested settings ("optimizer.lr", "data.params.rho"): the shape of a trial's
parameters, of a spec's baselines and of `TrainConfig.to_flat()`. Plain Python, no dependencies."""

from __future__ import annotations

from typing import Any, Collection, Mapping

MISSING = object()


def flatten(tree: Mapping[str, Any], keep: Collection[str] = (), prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}. A mapping whose dotted key is in `keep`, or an empty one,
    stays whole as a leaf."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path not in keep:
            flat.update(flatten(value, keep, path + "."))
        else:
            flat[path] = value
    return flat


def lookup(root: Any, dotted: str, default: Any = MISSING) -> Any:
    """The value at `dotted` under `root`, stepping into mappings by key and other objects (frozen
    configs) by attribute; `default` where a step is missing (without one, KeyError/AttributeError)."""
    node = root
    for part in dotted.split(".") if dotted else ():
        if isinstance(node, Mapping):
            if part not in node:
                if default is MISSING:
                    raise KeyError(dotted)
                return default
            node = node[part]
        elif default is MISSING:
            node = getattr(node, part)
        else:
            node = getattr(node, part, default)
            if node is default:
                return default
    return node


def assign(tree: dict, dotted: str, value: Any) -> None:
    """Set `dotted` in a nested dict, creating the tables on the way."""
    *path, leaf = dotted.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = value
