"""Registry of detection architectures FlexBin can binarize (see `registry.py`), and the
pretrained weights that ship with FlexBin (see `pretrained.py`)."""
from core.models.pretrained import PRETRAINED, load_pretrained, pretrained_for
from core.models.registry import (
    ARCHITECTURES,
    ArchitectureSpec,
    build_model,
    list_architectures,
)

__all__ = ["ARCHITECTURES", "PRETRAINED", "ArchitectureSpec", "build_model", "list_architectures",
           "load_pretrained", "pretrained_for"]
