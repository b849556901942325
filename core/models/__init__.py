"""Registry of detection architectures FlexBin can binarize (see `registry.py`). The
pretrained weights that ship with FlexBin are loaded by `core.pretrained`."""
from core.models.registry import (
    ARCHITECTURES,
    ArchitectureSpec,
    build_model,
    list_architectures,
)

__all__ = ["ARCHITECTURES", "ArchitectureSpec", "build_model", "list_architectures"]
