"""tensorrt_llm/models/modeling_utils.py (+ generation_mixin.py): config, model base classes, checkpoint loading.

- ``QuantConfig`` (dataclass): ``quant_algo, kv_cache_quant_algo, group_size, smoothquant_val, clamp_val,
  use_meta_recipe, has_zero_point, pre_quant_scale, exclude_modules, mamba_ssm_cache_dtype``.
- ``PretrainedConfig(*, architecture, dtype, hidden_size, num_hidden_layers, num_attention_heads, vocab_size=None,
  hidden_act='gelu', logits_dtype='float32', norm_epsilon=1e-5, position_embedding_type=learned_absolute,
  max_position_embeddings=None, rotary_embedding_dim=None, num_key_value_heads=None, intermediate_size=None,
  mapping=None, quantization=None, use_parallel_embedding=False, embedding_sharding_dim=0, head_size=None,
  qk_layernorm=False, runtime_defaults=None, **kwargs)``: other keys become attributes; ``mapping`` and
  ``quantization`` dicts become ``Mapping`` / ``QuantConfig``; ``from_dict`` picks
  ``MODEL_MAP[config['architecture']].config_class``; ``set_rank`` sets ``mapping.rank``; ``to_dict`` deep-copies
  the attributes (position type as its name, mapping without ``rank``, quantization as a dict).
- ``PretrainedModel`` runs ``quantize(self, config.quantization)`` after the subclass constructor (metaclass
  ``PostInitCaller``). ``load(weights)``: every parameter that is not initialized must be provided ("Required but
  not provided tensors"), extra tensors only warn (recorded here in ``unused_tensors``), each tensor must match its
  parameter.
- ``preprocess_weights`` (before ``load``): for each ``*.kv_cache_scaling_factor`` adds
  ``*.kv_cache_rcp_scaling_factor = 1 / scale`` when missing.
- ``PretrainedModel.from_checkpoint(ckpt_dir, rank=None, config=None)``: config.json through ``from_json_file`` (so
  through ``MODEL_MAP``), ``set_rank``, ``rank{r}.safetensors``, ``preprocess_weights``, ``cls(config)``, ``load``.
- ``prepare_inputs(max_batch_size, max_input_len, max_seq_len, max_num_tokens, use_cache, ...)`` reads the plugin
  config of ``default_net()`` and returns the forward's keyword arguments (``KeyValueCacheParams``,
  ``AttentionParams``; ``hidden_states`` on later pipeline stages), see generation_mixin.py.
- ``DecoderModelForCausalLM(config, transformer, lm_head)`` stores both, calls
  ``Attention.create_attention_const_params(self, config)`` and keeps ``config.position_embedding_type``;
  ``forward``: ``fill_attention_params``, the transformer, then on the last stage
  ``gather_last_token_logits`` -> ``lm_head`` -> output ``logits`` (``config.logits_dtype``), elsewhere output
  ``hidden_states_output`` (``config.dtype``).
"""

import copy
import json
import os
from dataclasses import asdict, dataclass

import safetensors.torch

from tensorrt_llm._utils import str_dtype_to_trt
from tensorrt_llm.functional import PositionEmbeddingType, gather_last_token_logits
from tensorrt_llm.layers.attention import Attention, AttentionParams, KeyValueCacheParams
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.generation_mixin import GenerationMixin
from tensorrt_llm.module import Module
from tensorrt_llm.quantization import QuantMode
from tensorrt_llm.quantization.quantize import quantize


@dataclass
class QuantConfig:
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: list | None = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: list | None = None
    mamba_ssm_cache_dtype: str | None = None

    @property
    def quant_mode(self) -> QuantMode:
        return QuantMode.from_quant_algo(self.quant_algo, self.kv_cache_quant_algo)


class PretrainedConfig:
    def __init__(self, *, architecture, dtype, hidden_size, num_hidden_layers, num_attention_heads, vocab_size=None,
                 hidden_act="gelu", logits_dtype="float32", norm_epsilon=1e-5,
                 position_embedding_type=PositionEmbeddingType.learned_absolute, max_position_embeddings=None,
                 rotary_embedding_dim=None, num_key_value_heads=None, intermediate_size=None, mapping=None,
                 quantization=None, use_parallel_embedding=False, embedding_sharding_dim=0, head_size=None,
                 qk_layernorm=False, runtime_defaults=None, **kwargs):
        self.architecture, self.dtype, self.vocab_size = architecture, dtype, vocab_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.hidden_act = num_attention_heads, hidden_act
        self.logits_dtype, self.norm_epsilon, self.runtime_defaults = logits_dtype, norm_epsilon, runtime_defaults
        if isinstance(position_embedding_type, str):
            position_embedding_type = PositionEmbeddingType.from_string(position_embedding_type)
        self.position_embedding_type = position_embedding_type
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.intermediate_size = hidden_size * 4 if intermediate_size is None else intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.mapping = Mapping.from_dict(mapping) if isinstance(mapping, dict) else (mapping or Mapping())
        self.quantization = (QuantConfig(**quantization) if isinstance(quantization, dict)
                             else quantization or QuantConfig())
        self.use_parallel_embedding, self.embedding_sharding_dim = use_parallel_embedding, embedding_sharding_dim
        self.head_size = hidden_size // num_attention_heads if head_size is None else head_size
        self.qk_layernorm = qk_layernorm
        self.rotary_embedding_dim = self.head_size if rotary_embedding_dim is None else rotary_embedding_dim
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def quant_mode(self) -> QuantMode:
        return self.quantization.quant_mode

    @property
    def kv_dtype(self) -> str:
        return "fp8" if self.quant_mode.has_fp8_kv_cache() else self.dtype

    @classmethod
    def from_json_file(cls, config_file) -> "PretrainedConfig":
        with open(config_file) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, config: dict) -> "PretrainedConfig":
        from tensorrt_llm.models import MODEL_MAP

        return getattr(MODEL_MAP[config["architecture"]], "config_class", cls)(**config)

    def set_rank(self, rank: int) -> None:
        self.mapping.rank = rank

    def to_dict(self) -> dict:
        output = copy.deepcopy(self.__dict__)
        output["position_embedding_type"] = str(self.position_embedding_type)
        output["mapping"] = {k: v for k, v in self.mapping.to_dict().items() if k != "rank"}
        output["quantization"] = asdict(self.quantization)
        return output


class PostInitCaller(type):
    def __call__(cls, *args, **kwargs):
        obj = type.__call__(cls, *args, **kwargs)
        obj.__post_init__()
        return obj


class PretrainedModel(Module, GenerationMixin, metaclass=PostInitCaller):
    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    def __post_init__(self) -> None:
        quantize(self, self.config.quantization)

    @classmethod
    def from_checkpoint(cls, ckpt_dir, rank=None, config=None, *, preprocess_weights_hook=None):
        if config is None:
            config = PretrainedConfig.from_json_file(os.path.join(ckpt_dir, "config.json"))
        if rank is not None:
            config.set_rank(rank)
        weights_path = os.path.join(ckpt_dir, f"rank{config.mapping.rank}.safetensors")
        assert os.path.isfile(weights_path)
        weights = safetensors.torch.load_file(weights_path)
        if preprocess_weights_hook is not None:
            weights = preprocess_weights_hook(weights)
        weights = preprocess_weights(weights, config)
        model = cls(config)
        model.load(weights)
        return model

    def prepare_inputs(self, max_batch_size, max_input_len, max_seq_len, max_num_tokens, use_cache,
                       max_beam_width=1, opt_num_tokens=None, prompt_embedding_table_size=0,
                       position_encoding_2d=False, max_draft_len=0, gather_context_logits=False,
                       lora_target_modules=None, opt_batch_size=0, num_hidden_layers=None):
        from tensorrt_llm.network import default_net

        plugins = default_net().plugin_config
        if not use_cache or prompt_embedding_table_size or position_encoding_2d or max_draft_len:
            raise NotImplementedError("stand-in: KV cache on, no p-tuning, no 2-D positions, no draft tokens")
        inputs = self.prepare_basic_inputs(
            max_batch_size=max_batch_size, max_beam_width=max_beam_width, max_input_len=max_input_len,
            max_seq_len=max_seq_len, hidden_size=self.config.hidden_size,
            num_kv_heads=self.config.num_key_value_heads, head_size=self.config.head_size,
            num_layers=num_hidden_layers or self.config.num_hidden_layers,
            kv_dtype=str_dtype_to_trt(self.config.kv_dtype), remove_input_padding=plugins.remove_input_padding,
            use_gpt_attention_plugin=bool(plugins.gpt_attention_plugin), use_gemm_plugin=bool(plugins.gemm_plugin),
            kv_cache_type="paged" if plugins.paged_kv_cache else "continuous",
            tokens_per_block=plugins.tokens_per_block, num_heads=self.config.num_attention_heads,
            max_num_tokens=max_num_tokens, opt_num_tokens=opt_num_tokens,
            dtype=str_dtype_to_trt(self.config.dtype), mapping=self.config.mapping,
            gather_context_logits=gather_context_logits)
        result = {
            "input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"], "use_cache": True,
            "last_token_ids": inputs["last_token_ids"], "attention_mask": inputs["attention_mask"],
            "kv_cache_params": KeyValueCacheParams(
                past_key_value=inputs["past_key_value"],
                host_past_key_value_lengths=inputs["host_past_key_value_lengths"],
                host_max_attention_window_sizes=inputs["host_max_attention_window_sizes"],
                host_sink_token_length=inputs["host_sink_token_length"],
                kv_cache_block_offsets=inputs["kv_cache_block_offsets"],
                host_kv_cache_block_offsets=inputs["host_kv_cache_block_offsets"],
                host_kv_cache_pool_pointers=inputs["host_kv_cache_pool_pointers"],
                host_kv_cache_pool_mapping=inputs["host_kv_cache_pool_mapping"],
                cache_indirection=inputs["cache_indirection"]),
            "attention_params": AttentionParams(
                sequence_length=inputs["sequence_length"], context_lengths=inputs["context_lengths"],
                host_context_lengths=inputs["host_context_lengths"], max_context_length=max_input_len,
                host_request_types=inputs["host_request_types"],
                host_runtime_perf_knobs=inputs["host_runtime_perf_knobs"],
                host_context_progress=inputs["host_context_progress"]),
        }
        if inputs["hidden_states_input"] is not None:
            result["hidden_states"] = inputs["hidden_states_input"]
        return result

    def load(self, weights: dict) -> None:
        params = dict(self.named_parameters())
        required = {name for name, param in params.items() if not param.is_inited()}
        missing = required - set(weights)
        if missing:
            raise RuntimeError(f"Required but not provided tensors:{sorted(missing)}")
        self.unused_tensors = sorted(set(weights) - required)
        for name, param in params.items():
            param.name = param.name or name
        for name in sorted(required):
            params[name].set_checkpoint_tensor(name, weights[name])


class DecoderModelForCausalLM(PretrainedModel):
    def __init__(self, config, transformer, lm_head) -> None:
        super().__init__(config)
        self.transformer = transformer
        self.lm_head = lm_head
        Attention.create_attention_const_params(self, config)
        self.position_embedding_type = config.position_embedding_type

    def forward(self, input_ids, position_ids=None, use_cache=False, last_token_ids=None, attention_mask=None,
                kv_cache_params=None, attention_params=None, mrope_params=None, hidden_states=None,
                prompt_embedding_table=None, prompt_tasks=None, prompt_vocab_size=None, lora_params=None,
                spec_decoding_params=None):
        from tensorrt_llm.network import default_net

        attention_params = Attention.fill_attention_params(self, attention_params)
        kwargs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": use_cache,
                  "attention_mask": attention_mask, "kv_cache_params": kv_cache_params,
                  "attention_params": attention_params}
        for name, value in (("lora_params", lora_params), ("hidden_states", hidden_states),
                            ("spec_decoding_params", spec_decoding_params)):
            if value is not None:
                kwargs[name] = value
        hidden_states = self.transformer.forward(**kwargs)
        if use_cache:
            hidden_states, presents = hidden_states
        if self.config.mapping.is_last_pp_rank():
            hidden_states = gather_last_token_logits(hidden_states, last_token_ids,
                                                     default_net().plugin_config.remove_input_padding)
            lm_logits = self.lm_head(hidden_states)
            lm_logits.mark_output("logits", self.config.logits_dtype)
            return lm_logits
        hidden_states.mark_output("hidden_states_output", self.config.dtype)
        return hidden_states


def preprocess_weights(weights: dict, model_config) -> dict:
    for name in list(weights):
        if name.endswith(".kv_cache_scaling_factor"):
            rcp = name.replace("kv_cache_scaling_factor", "kv_cache_rcp_scaling_factor")
            weights.setdefault(rcp, weights[name].reciprocal())
    return weights
