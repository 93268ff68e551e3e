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
- ``DecoderModelForCausalLM(config, transformer, lm_head)`` stores both and calls
  ``Attention.create_attention_const_params(self, config)``.
- ``GenerationMixin.prepare_attention_inputs(*, ..., attn_layer_idx=None, num_kv_heads_per_layer=None)``:
  recorded here (the real one declares the KV-cache network inputs for the listed attention layers).
"""

import copy
from dataclasses import asdict, dataclass

from tensorrt_llm.functional import PositionEmbeddingType
from tensorrt_llm.layers.attention import Attention
from tensorrt_llm.mapping import SINGLE_GPU, Mapping
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


class GenerationMixin:
    def prepare_attention_inputs(self, *, max_batch_size, max_beam_width, max_input_len, max_seq_len, num_kv_heads,
                                 head_size, num_layers, kv_dtype, kv_cache_type, num_profiles=1,
                                 enable_ctx_gen_opt_profiles=False, remove_input_padding=False,
                                 use_gpt_attention_plugin=False, tokens_per_block=32, mapping=SINGLE_GPU,
                                 streamingllm=False, attn_layer_idx=None, opt_batch_size=None,
                                 num_kv_heads_per_layer=None):
        return {"attn_layer_idx": attn_layer_idx, "num_kv_heads_per_layer": num_kv_heads_per_layer}


class PretrainedModel(Module, GenerationMixin, metaclass=PostInitCaller):
    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    def __post_init__(self) -> None:
        quantize(self, self.config.quantization)

    def load(self, weights: dict) -> None:
        params = dict(self.named_parameters())
        required = {name for name, param in params.items() if not param.is_inited()}
        missing = required - set(weights)
        if missing:
            raise RuntimeError(f"Required but not provided tensors:{sorted(missing)}")
        self.unused_tensors = sorted(set(weights) - required)
        for name in sorted(required):
            params[name].set_checkpoint_tensor(name, weights[name])


class DecoderModelForCausalLM(PretrainedModel):
    def __init__(self, config, transformer, lm_head) -> None:
        super().__init__(config)
        self.transformer = transformer
        self.lm_head = lm_head
        Attention.create_attention_const_params(self, config)


def preprocess_weights(weights: dict, model_config) -> dict:
    for name in list(weights):
        if name.endswith(".kv_cache_scaling_factor"):
            rcp = name.replace("kv_cache_scaling_factor", "kv_cache_rcp_scaling_factor")
            weights.setdefault(rcp, weights[name].reciprocal())
    return weights
