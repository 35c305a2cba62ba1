"""Read docker-compose.yml as docker compose does: YAML with merge keys, .env-style files, ${VAR} interpolation.

Shared by test_compose.py and test_k8s.py (no Docker engine on the test machines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DLNN_SERVICES = ("launch", "worker", "worker-cpu", "dashboard")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MissingVariable(ValueError):
    """A ${VAR:?message} whose variable is unset: compose refuses to start."""


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; one level of matching quotes removed."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+a}, ${VAR+a}."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth:
                raise ValueError(f"unclosed ${{ in {text!r}")
            out.append(_expand(text[i + 2:j - 1], env))
            i = j
        else:
            m = _NAME.match(text, i + 1)
            if not m:
                raise ValueError(f"bad $ in {text!r}")
            out.append(env.get(m.group(), ""))
            i = m.end()
    return "".join(out)


def _expand(inner: str, env: dict[str, str]) -> str:
    m = _NAME.match(inner)
    if not m:
        raise ValueError(f"bad variable ${{{inner}}}")
    name, rest = m.group(), inner[m.end():]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op):]
            unset = value is None or (op.startswith(":") and value == "")
            if op.endswith("-"):
                return interpolate(arg, env) if unset else value
            if op.endswith("?"):
                if unset:
                    raise MissingVariable(f"required variable {name} is missing a value: {arg}")
                return value
            return "" if unset else interpolate(arg, env)
    raise ValueError(f"bad variable ${{{inner}}}")


def resolve(node: Any, env: dict[str, str]) -> Any:
    """Interpolate every string of a parsed compose file (keys stay as written)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return node


def example_env(**overrides: str) -> dict[str, str]:
    """.env.example with its empty passwords filled (as a user's .env would be), plus overrides."""
    env = read_env_file()
    env.update(POSTGRES_PASSWORD="test-only-pg", DLNN_DASHBOARD_PASSWORD="test-only-dash")
    env.update(overrides)
    return env


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` (mapping or KEY=VALUE list) as strings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def duration_s(text: str | int | float) -> float:
    """Compose durations: 90s, 2m, 1m30s, 1h, 500ms."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", text)
    assert parts and "".join(a + b for a, b in parts) == text, f"not a duration: {text!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)
