"""tensorrt_llm/layers/mlp.py.

- ``MLP``: ``fc = ColumnLinear(hidden, 2 * ffn if hidden_act in ('swiglu', 'gegelu') else ffn, gather_output=False)``
  (the gated activations take [x; gate] from one fused GEMM) and ``proj = RowLinear(ffn, hidden)``;
  ``forward``: ``proj(ACT2FN[hidden_act](fc(x)))`` (``swiglu``: ``silu`` of the *second* half times the first);
- ``GatedMLP(MLP)``: adds ``gate = ColumnLinear(hidden, ffn, gather_output=False)``; ``forward``:
  ``proj(ACT2FN[hidden_act](fc(x)) * gate(x))`` (``fc`` is the activated branch, ``gate`` the linear one).
"""

from tensorrt_llm.functional import ACT2FN
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
from tensorrt_llm.module import Module
from tensorrt_llm.quantization import NO_QUANT


class MLP(Module):
    def __init__(self, hidden_size, ffn_hidden_size, hidden_act, bias=True, dtype=None, tp_group=None, tp_size=1,
                 quant_mode=NO_QUANT, inner_layernorm=False, eps=1e-05, is_expert=False):
        super().__init__()
        if inner_layernorm:
            raise NotImplementedError("stand-in: inner_layernorm is not modelled")
        if hidden_act not in ACT2FN:
            raise NotImplementedError(f"stand-in: activation {hidden_act} is not modelled")
        self.hidden_act = hidden_act
        fc_out = 2 * ffn_hidden_size if hidden_act in ("swiglu", "gegelu") else ffn_hidden_size
        self.fc = ColumnLinear(hidden_size, fc_out, bias=bias, dtype=dtype, tp_group=tp_group, tp_size=tp_size,
                               gather_output=False)
        self.proj = RowLinear(ffn_hidden_size, hidden_size, bias=bias, dtype=dtype, tp_group=tp_group,
                              tp_size=tp_size, is_expert=is_expert)

    def forward(self, hidden_states, lora_layer_params=None, all_reduce_params=None):
        return self.proj(ACT2FN[self.hidden_act](self.fc(hidden_states)))


class GatedMLP(MLP):
    def __init__(self, hidden_size, ffn_hidden_size, hidden_act, bias=True, dtype=None, tp_group=None, tp_size=1,
                 quant_mode=NO_QUANT, inner_layernorm=False, eps=1e-05):
        super().__init__(hidden_size, ffn_hidden_size, hidden_act, bias=bias, dtype=dtype, tp_group=tp_group,
                         tp_size=tp_size, quant_mode=quant_mode, inner_layernorm=inner_layernorm, eps=eps)
        self.gate = ColumnLinear(hidden_size, ffn_hidden_size, bias=bias, dtype=dtype, tp_group=tp_group,
                                 tp_size=tp_size, gather_output=False)

    def forward(self, hidden_states, lora_layer_params=None, all_reduce_params=None):
        return self.proj(ACT2FN[self.hidden_act](self.fc(hidden_states)) * self.gate(hidden_states))
