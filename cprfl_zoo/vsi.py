"""Visual-semantic interaction (VSI) network.

One pre-norm transformer encoder layer over the concatenation [F; P] of visual tokens F (B, v, d)
and category prompts P (C, d), computed exactly as the official CPRFL code does, i.e. **without
residual connections**::

    x = Attn(LayerNorm1(x))
    x = FFN(LayerNorm2(x))

Only the C prompt rows of the output are used, so this module computes queries, attention,
output projection and FFN for the prompt tokens alone (keys and values still span all v + C
tokens), and the prompt-side LayerNorm / q / k / v once per batch instead of once per image.
The result equals the full computation's last C rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp, use_fused_attn
from torch import nn

__all__ = ["VSI", "PromptAttention"]

# Largest score matrix (elements) the explicit CUDA path materialises; beyond it SDPA saves memory.
_MAX_EXPLICIT_SCORES = 2**28


class PromptAttention(nn.Module):
    """Multi-head attention whose queries are the prompts and whose keys span [F; P].

    Parameter layout matches timm's ``Attention`` (``qkv`` then ``proj``), with q, k and v stacked
    in that order and heads contiguous within each, as in the official code's ``to_qkv``.

    Attention runs through ``scaled_dot_product_attention`` (``fused_attn``, timm's switch: off
    with ``TIMM_FUSED_ATTN=0``), except on CUDA with heads wider than 256 (the paper's 512), which
    no flash kernel covers: there an explicit matmul-softmax is faster, and is used while its
    (B, heads, C, v + C) score matrix stays under 2**28 elements.

    Args:
        dim: Token width d.
        num_heads: Number of heads.
        head_dim: Width of each head (the official code uses 512, so inner width 4096).
        qkv_bias: Add a bias to the qkv projection.
        attn_drop: Dropout on attention weights.
        proj_drop: Dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int = 512,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.inner_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * self.inner_dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.fused_attn = use_fused_attn()
        self.proj = nn.Linear(self.inner_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def prompt_qkv(self, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project the normalised prompts to queries, keys and values, once per batch.

        Args:
            prompts: Normalised prompts (C, d).

        Returns:
            ``(q, k, v)``, each (heads, C, head_dim); ``q`` is not yet scaled.
        """
        qkv = F.linear(prompts, self.qkv.weight, self.qkv.bias)  # (C, 3·inner)
        return qkv.reshape(-1, 3, self.num_heads, self.head_dim).permute(1, 2, 0, 3).unbind(0)

    def token_kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the normalised visual tokens to keys and values.

        Args:
            tokens: Normalised visual tokens (B, v, d).

        Returns:
            ``(k, v)``, each (B, heads, v, head_dim).
        """
        inner = self.inner_dim
        bias = self.qkv.bias
        kv = F.linear(tokens, self.qkv.weight[inner:], None if bias is None else bias[inner:])
        batch, num_tokens = tokens.shape[:2]
        kv = kv.reshape(batch, num_tokens, 2, self.num_heads, self.head_dim)
        return kv.permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """Concatenate the heads and apply the output projection (and its dropout).

        Args:
            out: Attention output per head (B, heads, C, head_dim).

        Returns:
            (B, C, d).
        """
        out = out.transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(out))

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Attend from each prompt to all visual tokens and all prompts.

        Args:
            tokens: Normalised visual tokens (B, v, d).
            prompts: Normalised prompts (C, d), shared by the batch.

        Returns:
            Attention output at the prompt positions (B, C, d).
        """
        batch = tokens.shape[0]
        q, prompt_k, prompt_v = self.prompt_qkv(prompts)
        token_k, token_v = self.token_kv(tokens)
        k = torch.cat([token_k, prompt_k.expand(batch, -1, -1, -1)], dim=2)
        v = torch.cat([token_v, prompt_v.expand(batch, -1, -1, -1)], dim=2)
        q = q.unsqueeze(0)
        dropout_p = self.attn_drop if self.training else 0.0
        num_prompts, num_keys = q.shape[2], k.shape[2]
        explicit = (
            tokens.is_cuda
            and self.head_dim > 256
            and batch * self.num_heads * num_prompts * num_keys <= _MAX_EXPLICIT_SCORES
        )
        if self.fused_attn and not explicit:
            out = F.scaled_dot_product_attention(
                q.expand(batch, -1, -1, -1), k, v, dropout_p=dropout_p, scale=self.scale
            )
        else:
            scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, C, v + C)
            attn = F.dropout(scores.softmax(dim=-1), p=dropout_p)
            out = attn @ v
        return self.merge_heads(out)


class VSI(nn.Module):
    """The VSI network: one residual-free pre-norm encoder layer, evaluated at the prompts.

    Args:
        dim: Token width d (2048 in the paper).
        num_heads: Attention heads (8).
        head_dim: Width of each head (512).
        mlp_hidden_dim: Hidden width of the FFN (2048).
        qkv_bias: Bias on the qkv projection (False).
        drop_rate: Dropout after the attention projection and inside the FFN (0.1).
        attn_drop_rate: Dropout on attention weights (0, as the official code).
        norm_layer: Normalisation layer class.
        act_layer: FFN activation class.
    """

    def __init__(
        self,
        dim: int = 2048,
        num_heads: int = 8,
        head_dim: int = 512,
        mlp_hidden_dim: int = 2048,
        qkv_bias: bool = False,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = PromptAttention(
            dim,
            num_heads=num_heads,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate,
            proj_drop=drop_rate,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop_rate)

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Refine the prompts with the image's visual tokens.

        Args:
            tokens: Projected visual tokens F (B, v, d).
            prompts: Category prompts P (C, d).

        Returns:
            Category-specific features P' (B, C, d).
        """
        x = self.attn(self.norm1(tokens), self.norm1(prompts))
        return self.mlp(self.norm2(x))
