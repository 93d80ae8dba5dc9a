"""zskt: zero-shot knowledge transfer via adversarial belief matching (Micaelli & Storkey, NeurIPS 2019).

Public API: `build_model(name, num_classes=10, in_channels=3)` and `load_model(path, arch=None)`; the
command line is `zskt` (see `zskt --help`).
"""

__version__ = "0.1.0"

from zskt.errors import ZsktError
from zskt.models import build_model, load_generator, load_model

__all__ = ["ZsktError", "__version__", "build_model", "load_generator", "load_model"]
