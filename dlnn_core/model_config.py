"""What network to build, as a frozen `ModelConfig`, and the names a config may choose for it: model
kinds and forms, weight initializations, and the methods that take the Euler–Lagrange second
derivatives. Importable without torch, so configs and study specs are checked before anything
loads it; models.py builds the networks and lagrangian.py implements the methods."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from .activations import check_activation
from .errors import ConfigError, collect, raise_all
from .fields import Boolean, Integer, Number, OneOf, Rule, check_fields

MODEL_KINDS = ("dlnn", "lnn", "mlp")
MODEL_FORMS = ("free", "structured")
# Weight initializations (models.INITS implements each); auto: orthogonal for the free form, PyTorch's default otherwise.
INIT_CHOICES = ("auto", "default", "lnn", "orthogonal")
# How second derivatives are taken (lagrangian.DERIVATIVES implements each; benchmarks/acceleration.py compares them).
METHODS = ("jvp", "autograd", "hessian", "loop")
DEFAULT_METHOD = "autograd"  # fastest on CPU: benchmarks/acceleration.py


@dataclass(frozen=True)
class ModelConfig:
    """What network to build; every field is searchable from a study spec."""

    kind: str = "dlnn"  # dlnn: L and D; lnn: L only (conserves energy); mlp: state -> q̈ directly
    form: str = "free"  # free: MLP outputs L (and D); structured: Cholesky mass/damping matrices
    hidden: int = 128
    depth: int = 2  # hidden layers
    activation: str = "softplus"
    shared_trunk: bool = False  # one MLP with outputs for L and D (the published DLNN) vs two MLPs
    nonneg_dissipation: bool = True  # free form: D = softplus(net) ≥ 0 instead of a raw output
    angle_features: bool = True  # feed sin/cos of rotational coordinates instead of the angle
    mass_eps: float = 1e-3  # structured form: M = LLᵀ + εI keeps ∂²L/∂q̇² invertible
    init: str = "auto"  # auto, default (PyTorch), lnn (Cranmer et al. unit-scale), orthogonal (published DLNN)

    RULES: ClassVar[dict[str, Rule]] = {  # activation: check_activation (which ones have curvature)
        "kind": OneOf(MODEL_KINDS),
        "form": OneOf(MODEL_FORMS),
        "hidden": Integer(what="a positive integer"),
        "depth": Integer(what="a positive integer"),
        "shared_trunk": Boolean(),
        "nonneg_dissipation": Boolean(),
        "angle_features": Boolean(),
        "init": OneOf(INIT_CHOICES),
        "mass_eps": Number(low=0, low_open=True, what="a positive number"),
    }

    def __post_init__(self) -> None:
        """Check every field and raise one ConfigError naming all the bad ones."""
        errors: list[ConfigError] = []
        check_fields(errors, self, "model.", self.RULES)
        collect(errors, check_activation, self.activation, for_lagrangian=self.kind != "mlp")
        raise_all(errors)

    @property
    def init_scheme(self) -> str:
        """The INITS entry to use. "auto" picks orthogonal for a free-form L and PyTorch's default
        otherwise: each form trains best from that one (benchmarks/science.py compares them)."""
        if self.init != "auto":
            return self.init
        return "orthogonal" if self.kind != "mlp" and self.form == "free" else "default"

    def to_dict(self) -> dict:
        return asdict(self)
