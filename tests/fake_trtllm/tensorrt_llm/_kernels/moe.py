"""The MoE plugin (cpp/tensorrt_llm/plugins/mixtureOfExperts, kernels/mixtureOfExperts/moe_kernels.cu) in torch.

Routing (``route``), from float32 router logits [T, E] and ``moe.normalization_mode``:

- ``NONE`` (0): softmax over all experts, then the top-k probabilities as they are;
- ``RENORMALIZE`` (1): top-k of the logits, then a softmax over the k chosen (= softmax -> top-k -> renormalize);
- the other modes (SPARSE_MIXER, DEVICE_LIMITED*) are not modelled and raise.

Experts (``run_experts``) of this rank only, ``first_expert .. first_expert + E_local - 1`` (contiguous EP block; the
plugin gets the *global* expert count and the EP rank): for every (token, chosen expert) pair on this rank,
``fc`` [2 I, H] -> activation (``swiglu``: ``silu(second half) * first half``) -> ``proj`` [H, I], scaled by the
routing weight and summed in float32 (finalize kernel), cast to the activation dtype. Experts on other EP ranks
contribute nothing here; the layer's all-reduce adds the ranks' partial outputs (MoE-TP shards and EP blocks alike).
FP8 (per-tensor QDQ): the input is rounded through e4m3 with ``fc.activation_scaling_factor``, each expert's GEMM
is dequantized with its ``weights_scaling_factor[e] * activation_scaling_factor`` (``fc1_dequant``), the activation
output is rounded with ``proj.activation_scaling_factor`` (``fc2_quant = 1 / asf``) and dequantized likewise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tensorrt_llm.functional import rowwise_mm

E4M3_MAX = 448.0
NONE, RENORMALIZE = 0, 1


def route(logits: torch.Tensor, top_k: int, normalization_mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] float32, experts [T, k] int64) from router logits [T, E]."""
    logits = logits.float()
    if int(normalization_mode) == RENORMALIZE:
        values, experts = logits.topk(top_k, dim=-1)
        return values.softmax(dim=-1), experts
    if int(normalization_mode) == NONE:
        return logits.softmax(dim=-1).topk(top_k, dim=-1)
    raise NotImplementedError(f"stand-in MoE plugin: normalization_mode {normalization_mode} is not modelled")


def _fake_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale.float()


def _activate(h: torch.Tensor, hidden_act: str) -> torch.Tensor:
    if hidden_act == "swiglu":
        x, gate = h.chunk(2, dim=-1)
        return F.silu(gate) * x
    if hidden_act == "silu":
        return F.silu(h)
    raise NotImplementedError(f"stand-in MoE plugin: activation {hidden_act} is not modelled")


def run_experts(hidden: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, fc, proj, first_expert: int,
                hidden_act: str) -> torch.Tensor:
    """This rank's share of the routed output [T, H]; ``fc``/``proj`` are (weight [E_loc, out, in], weight scales
    [E_loc, 1] or None, activation scale [1] or None)."""
    fc_weight, fc_wsf, fc_asf = fc
    proj_weight, proj_wsf, proj_asf = proj
    if hidden.shape[-1] != fc_weight.shape[-1] or fc_weight.shape[0] != proj_weight.shape[0]:
        raise ValueError(f"MoE plugin: hidden {list(hidden.shape)} with fc {list(fc_weight.shape)} and proj "
                         f"{list(proj_weight.shape)}")
    out = torch.zeros(hidden.shape[0], proj_weight.shape[1], dtype=torch.float32)
    x = hidden.float() if fc_asf is None else _fake_e4m3(hidden, fc_asf)
    for local in range(fc_weight.shape[0]):
        token, slot = (experts == first_expert + local).nonzero(as_tuple=True)
        if not token.numel():
            continue
        w1 = fc_weight[local].float() * (1.0 if fc_wsf is None else fc_wsf[local].float())
        h = rowwise_mm(x[token], w1.T).to(hidden.dtype)
        h = _activate(h.float(), hidden_act).to(hidden.dtype)
        h = h.float() if proj_asf is None else _fake_e4m3(h, proj_asf)
        w2 = proj_weight[local].float() * (1.0 if proj_wsf is None else proj_wsf[local].float())
        y = rowwise_mm(h, w2.T).to(hidden.dtype).float()
        out.index_add_(0, token, y * weights[token, slot, None])
    return out.to(hidden.dtype)
