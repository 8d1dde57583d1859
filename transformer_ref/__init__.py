"""transformer_ref: the reference implementation behind the Transformer course.

One concept per module; import what you need from it, e.g.

    from transformer_ref.attention import scaled_dot_product_attention
    from transformer_ref.multihead import MultiHeadAttention

Mask convention everywhere: boolean tensors, True = may attend, broadcastable to
(..., T_q, T_k), the same as ``torch.nn.functional.scaled_dot_product_attention``.
"""

__version__ = "0.1.0"
