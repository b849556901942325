"""Registry of detection architectures FlexBin can binarize (see `registry.py`)."""
from core.models.registry import (
    ARCHITECTURES,
    ArchitectureSpec,
    build_model,
    list_architectures,
)

__all__ = ["ARCHITECTURES", "ArchitectureSpec", "build_model", "list_architectures"]
