"""Attention variants behind one interface (see `base.py`), created by name."""
from torch import nn

from lib.layers.attention.axial import AxialAttention
from lib.layers.attention.base import QKVAttention
from lib.layers.attention.bilevel_routing import BiLevelRoutingAttention
from lib.layers.attention.complex_rotation import ComplexRotationAttention
from lib.layers.attention.gaussian_adaptive import GaussianAdaptiveAttention
from lib.layers.attention.linear import LinearAttention
from lib.layers.attention.moh import MoHAttention
from lib.layers.attention.multi_axis import MultiAxisAttention
from lib.layers.attention.softmax import SoftmaxAttention
from lib.layers.attention.symmetric import SymmetricAttention
from lib.layers.attention.sparse import FixedSparseAttention, LocalAttention, MaskedAttention, StridedSparseAttention

ATTENTION_LAYERS: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxAttention,
    "linear": LinearAttention,
    "local": LocalAttention,
    "sparse_strided": StridedSparseAttention,
    "sparse_fixed": FixedSparseAttention,
    "axial": AxialAttention,
    "multi_axis": MultiAxisAttention,
    "moh": MoHAttention,
    "bilevel_routing": BiLevelRoutingAttention,
    "gaussian_adaptive": GaussianAdaptiveAttention,
    "symmetric": SymmetricAttention,
    "complex_rotation": ComplexRotationAttention,
}


def create_attention(name: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    """Build the attention variant `name` (a key of ATTENTION_LAYERS)."""
    if name not in ATTENTION_LAYERS:
        raise ValueError(f"unknown attention {name!r}; expected one of {sorted(ATTENTION_LAYERS)}")
    return ATTENTION_LAYERS[name](dim=dim, num_heads=num_heads, **kwargs)


__all__ = [
    "ATTENTION_LAYERS", "AxialAttention", "BiLevelRoutingAttention", "ComplexRotationAttention",
    "GaussianAdaptiveAttention", "SymmetricAttention", "FixedSparseAttention", "LinearAttention", "LocalAttention",
    "MaskedAttention", "MoHAttention", "MultiAxisAttention", "QKVAttention", "SoftmaxAttention",
    "StridedSparseAttention", "create_attention",
]
