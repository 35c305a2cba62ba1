"""The device a run trains on, as users write it: "auto" (CUDA when there is one, else the CPU),
"cpu", "cuda" or "cuda:K". One parser for every place that reads such a string (TrainConfig.device,
the CLI's --device, the GPU slot claim, `train.resolve_device`); it imports no torch, so configs and
`dlnn work` read a device before torch (and CUDA) starts."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

ALLOWED = "'auto', 'cpu', 'cuda' or 'cuda:K'"  # what an error message says is allowed


@dataclass(frozen=True)
class Device:
    """A parsed device: kind "auto", "cpu" or "cuda", and the CUDA index when one is named (cuda:K)."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(value: object, field: str = "device") -> Device:
    """The Device `value` names; a ConfigError naming `field` and the allowed forms otherwise."""
    if value in ("auto", "cpu", "cuda"):
        return Device(str(value))
    if isinstance(value, str) and value.startswith("cuda:"):
        index = value.removeprefix("cuda:")
        if index.isascii() and index.isdigit():
            return Device("cuda", int(index))
    raise ConfigError(field, value, ALLOWED)
