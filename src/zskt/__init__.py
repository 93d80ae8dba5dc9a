"""zskt: zero-shot knowledge transfer via adversarial belief matching (Micaelli & Storkey, NeurIPS 2019).

Public API: `build_model(name, num_classes=10, in_channels=3)`, `load_model(path, arch=None)`,
`resolve_network(spec, ...)` (any teacher or student: a name, a file, `module:callable`, `timm:NAME`) and
`with_features(model, layers)` (the `(logits, feature_maps)` forward the methods use); the command line is
`zskt` (see `zskt --help`).
"""

__version__ = "0.1.0"

from zskt.errors import ZsktError
from zskt.models import build_model, load_generator, load_model, resolve_network, with_features

__all__ = [
    "ZsktError",
    "__version__",
    "build_model",
    "load_generator",
    "load_model",
    "resolve_network",
    "with_features",
]
