"""tensorrt_llm/layers/moe.py.

- ``MoeConfig`` (dataclass): ``num_experts, shared_expert_intermediate_size, top_k, normalization_mode,
  sparse_mixer_epsilon, tp_mode, device_limited_*``; ``validate()`` needs num_experts and top_k both zero or both
  set; ``has_moe()`` is ``num_experts > 1``.
- ``MixtureOfExperts`` (``MOE``): ``experts_per_node = num_experts / moe_ep_size``, ``expert_inter_size =
  ffn_hidden_size / moe_tp_size``; ``router = RowLinear(hidden, num_experts, dtype="float32", tp_size=1)``;
  ``fc`` / ``proj`` are ``MOEWeightWrapper`` s with ``weight [experts_per_node, out, in]``: fc out is
  ``2 * expert_inter_size`` for gated activations (swiglu). The quant mode is applied *in the constructor*: with
  FP8 QDQ the expert weights are ``fp8``, plus ``weights_scaling_factor [experts_per_node, 1]`` and
  ``activation_scaling_factor [1]`` (float32). FP8 with bias is rejected.
- ``SharedMoE(MOE)``: the routed MoE with ``use_all_reduce=False``, ``shared_expert = MLP(hidden,
  moe_config.shared_expert_intermediate_size, hidden_act, bias=False, is_expert=True)`` and, only with
  ``use_shared_gate``, ``shared_expert_gate = RowLinear(hidden, 1, tp_size=1)``.

``forward`` (MixtureOfExperts): ``router(cast(x, float32))`` -> the MoE plugin (routing and experts, see
``_kernels/moe.py``; FP8 inputs quantized with ``fc.activation_scaling_factor``) -> one all-reduce over the TP
group when ``use_all_reduce`` and tp > 1. SharedMoE: ``routed + shared_expert(x)`` (times
``sigmoid(shared_expert_gate(x))`` with the gate), then the one all-reduce. ``forward_routed`` is the stand-in's
entry for a routing computed elsewhere (weights and chosen experts per token, the plugin's static-routing
inputs), for models whose router the plugin's normalization modes do not cover.
"""

from dataclasses import asdict, dataclass
from enum import IntEnum

from tensorrt_llm._kernels.moe import route, run_experts
from tensorrt_llm.functional import allreduce, cast, sigmoid, wrap
from tensorrt_llm.layers.linear import RowLinear
from tensorrt_llm.layers.mlp import MLP
from tensorrt_llm.mapping import SINGLE_GPU
from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter
from tensorrt_llm.quantization import NO_QUANT

GATED_ACTIVATIONS = ("swiglu", "geglu", "swiglu_bias")


@dataclass
class MoeConfig:
    class ExpertScaleNormalizationMode(IntEnum):
        NONE = 0
        RENORMALIZE = 1
        SPARSE_MIXER = 2
        DEVICE_LIMITED = 3
        DEVICE_LIMITED_RENORM = 4

    num_experts: int = 0
    shared_expert_intermediate_size: int = 0
    top_k: int = 0
    normalization_mode: int = ExpertScaleNormalizationMode.RENORMALIZE
    sparse_mixer_epsilon: float = 0.01
    tp_mode: int = 0
    device_limited_n_group: int = 0
    device_limited_topk_group: int = 0
    device_limited_routed_scaling_factor: float = 1.0

    def validate(self) -> "MoeConfig":
        if (self.num_experts == 0) != (self.top_k == 0):
            raise ValueError("Both or neither MoeConfig's num_experts and top_k must be set to 0")
        return self

    def has_moe(self) -> bool:
        return self.num_experts > 1

    @classmethod
    def from_dict(cls, config: dict) -> "MoeConfig":
        return cls(**config)

    def to_dict(self) -> dict:
        return asdict(self)


class MOEWeightWrapper(Module):
    def __init__(self, in_features, out_features, experts_per_node, quant_mode, dtype, weight_dtype, has_bias):
        super().__init__()
        self.weight = Parameter(shape=(experts_per_node, out_features, in_features), dtype=weight_dtype)
        self.register_parameter("bias", Parameter(shape=(experts_per_node, out_features), dtype=dtype)
                                if has_bias else None)
        if quant_mode.has_fp8_qdq():
            self.activation_scaling_factor = Parameter(shape=(1,), dtype="float32")
            self.weights_scaling_factor = Parameter(shape=(experts_per_node, 1), dtype="float32")
        self.fp8 = quant_mode.has_fp8_qdq()

    def plugin_args(self):
        """(weight, per-expert weight scales or None, activation scale or None) as torch tensors."""
        if not self.fp8:
            return self.weight.raw_value, None, None
        return self.weight.raw_value, self.weights_scaling_factor.raw_value, self.activation_scaling_factor.raw_value


class MixtureOfExperts(Module):
    def __init__(self, moe_config, hidden_size, ffn_hidden_size, hidden_act, mapping=SINGLE_GPU, bias=True,
                 dtype=None, tp_group=None, tp_size=1, quant_mode=NO_QUANT, use_all_reduce=True,
                 pre_quant_scale=False, zero=False, use_w4a8_awq=False, use_int8_weight=False, group_size=-1,
                 static_routing=False):
        super().__init__()
        self.init_args = {"moe_config": moe_config, "hidden_size": hidden_size, "ffn_hidden_size": ffn_hidden_size,
                          "hidden_act": hidden_act, "mapping": mapping, "bias": bias, "dtype": dtype,
                          "tp_group": tp_group, "tp_size": tp_size, "quant_mode": quant_mode}
        if moe_config.num_experts % mapping.moe_ep_size or ffn_hidden_size % mapping.moe_tp_size:
            raise ValueError("MixtureOfExperts: experts / expert width not divisible by moe_ep_size / moe_tp_size")
        if quant_mode.has_fp8_qdq() and bias:
            raise ValueError("MixtureOfExperts - Bias is not supported with FP8")
        self.moe_config = moe_config
        self.hidden_act, self.dtype, self.quant_mode = hidden_act, dtype, quant_mode
        self.tp_group, self.tp_size, self.use_all_reduce = tp_group, tp_size, use_all_reduce
        self.first_expert = mapping.moe_ep_rank * (moe_config.num_experts // mapping.moe_ep_size)
        experts_per_node = moe_config.num_experts // mapping.moe_ep_size
        inter = ffn_hidden_size // mapping.moe_tp_size
        weight_dtype = "fp8" if quant_mode.has_fp8_qdq() else dtype
        self.router = RowLinear(hidden_size, moe_config.num_experts, bias=False, dtype="float32", tp_group=None,
                                tp_size=1, strict_dtype=True)
        fc_out = 2 * inter if hidden_act in GATED_ACTIVATIONS else inter
        self.fc = MOEWeightWrapper(hidden_size, fc_out, experts_per_node, quant_mode, dtype, weight_dtype, bias)
        self.proj = MOEWeightWrapper(inter, hidden_size, experts_per_node, quant_mode, dtype, weight_dtype, bias)

    def forward(self, hidden_states, finished=None, lora_layer_params=None, all_reduce_params=None):
        logits = self.router(cast(hidden_states, "float32")).value
        weights, experts = route(logits, self.moe_config.top_k, self.moe_config.normalization_mode)
        return self._reduce(self._routed(hidden_states, weights, experts))

    def forward_routed(self, hidden_states, weights, experts):
        """The routed experts for a given routing: ``weights`` [T, k] float32 and ``experts`` [T, k] (global ids)."""
        return self._reduce(self._routed(hidden_states, weights, experts))

    def forward_experts(self, hidden_states, token_selected_experts, token_final_scales, lora_layer_params,
                        side_stream_id):
        """1.2.x's entry into the MoE plugin for a routing computed in the graph (no all-reduce here)."""
        if lora_layer_params is not None or int(side_stream_id) != 0:
            raise NotImplementedError("stand-in MoE plugin: LoRA and side streams are not modelled")
        return self._routed(hidden_states, token_final_scales.value.float(), token_selected_experts.value)

    def _routed(self, hidden_states, weights, experts):
        if self.fc.bias is not None:
            raise NotImplementedError("stand-in MoE plugin: expert biases are not modelled")
        return wrap(run_experts(hidden_states.value, weights, experts, self.fc.plugin_args(),
                                self.proj.plugin_args(), self.first_expert, self.hidden_act))

    def _reduce(self, output):
        if self.use_all_reduce and self.tp_size > 1 and self.tp_group is not None:
            return allreduce(output, self.tp_group)
        return output


MOE = MixtureOfExperts


class SharedMoE(MOE):
    def __init__(self, moe_config, hidden_size, ffn_hidden_size, hidden_act, mapping=SINGLE_GPU, bias=True,
                 dtype=None, tp_group=None, tp_size=1, quant_mode=NO_QUANT, use_shared_gate=False,
                 use_side_stream=False):
        super().__init__(moe_config=moe_config, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
                         hidden_act=hidden_act, mapping=mapping, bias=bias, dtype=dtype, tp_group=tp_group,
                         tp_size=tp_size, quant_mode=quant_mode, use_all_reduce=False)
        self.init_args.update(use_shared_gate=use_shared_gate, use_side_stream=use_side_stream)
        self.shared_expert = MLP(hidden_size, moe_config.shared_expert_intermediate_size, hidden_act, bias=False,
                                 dtype=dtype, tp_group=tp_group, tp_size=tp_size, quant_mode=quant_mode,
                                 is_expert=True)
        if use_shared_gate:
            self.shared_expert_gate = RowLinear(hidden_size, 1, bias=False, dtype=dtype, tp_group=None, tp_size=1)

    def forward(self, hidden_states, finished=None, lora_layer_params=None, all_reduce_params=None):
        return self._add_shared(hidden_states, super().forward(hidden_states))

    def forward_routed(self, hidden_states, weights, experts):
        return self._add_shared(hidden_states, super().forward_routed(hidden_states, weights, experts))

    def _add_shared(self, hidden_states, output):
        shared = self.shared_expert(hidden_states)
        gate = self._modules.get("shared_expert_gate")
        if gate is not None:
            shared = sigmoid(gate(hidden_states)) * shared
        output = output + shared
        if self.tp_size > 1 and self.tp_group is not None:
            output = allreduce(output, self.tp_group)
        return output
