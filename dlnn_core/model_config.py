"""What network to build, as a frozen `ModelConfig`, and the names a config may choose for it: model
kinds and forms, weight initializations, and the methods that take the Euler–Lagrange second
derivatives. Importable without torch, so configs and study specs are checked before anything
loads it; models.py builds the networks and lagrangian.py implements the methods."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .activations import check_activation
from .errors import ConfigError, collect, raise_all

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

    def __post_init__(self) -> None:
        """Check every field and raise one ConfigError naming all the bad ones."""
        errors: list[ConfigError] = []
        if self.kind not in MODEL_KINDS:
            errors.append(ConfigError("model.kind", self.kind, MODEL_KINDS))
        if self.form not in MODEL_FORMS:
            errors.append(ConfigError("model.form", self.form, MODEL_FORMS))
        for name in ("hidden", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(ConfigError(f"model.{name}", value, "a positive integer"))
        if self.init not in INIT_CHOICES:
            errors.append(ConfigError("model.init", self.init, INIT_CHOICES))
        if not (isinstance(self.mass_eps, (int, float)) and self.mass_eps > 0):
            errors.append(ConfigError("model.mass_eps", self.mass_eps, "a positive number"))
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
