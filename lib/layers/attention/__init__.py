"""Attention variants behind one interface (see `base.py`), created by name."""
from torch import nn

from lib.layers.attention.axial import AxialAttention
from lib.layers.attention.base import QKVAttention
from lib.layers.attention.linear import LinearAttention
from lib.layers.attention.moh import MoHAttention
from lib.layers.attention.multi_axis import MultiAxisAttention
from lib.layers.attention.softmax import SoftmaxAttention
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
}


def create_attention(name: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    """Build the attention variant `name` (a key of ATTENTION_LAYERS)."""
    if name not in ATTENTION_LAYERS:
        raise ValueError(f"unknown attention {name!r}; expected one of {sorted(ATTENTION_LAYERS)}")
    return ATTENTION_LAYERS[name](dim=dim, num_heads=num_heads, **kwargs)


__all__ = [
    "ATTENTION_LAYERS", "AxialAttention", "FixedSparseAttention", "LinearAttention", "LocalAttention",
    "MaskedAttention", "MoHAttention", "MultiAxisAttention", "QKVAttention", "SoftmaxAttention",
    "StridedSparseAttention", "create_attention",
]
