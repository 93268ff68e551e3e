"""tensorrt_llm/functional.py, executed: every op computes its result with torch at once (no TensorRT graph).

A :class:`Tensor` is either a network input (declared with a name, a dtype, a shape with ``-1`` for dynamic sizes and
a ``dim_range`` per optimization profile; its value is fed by the runtime) or an op's result wrapping a torch tensor.
Contracts the real code enforces and the stand-in keeps:

- ``Tensor(dtype=...)`` converts a dtype string with ``str_dtype_to_trt`` (unknown names fail its assertion), and
  ``Network._add_input`` asserts a ``trt.DataType`` (see network.py); all dims of a ``dim_range`` must list the same
  number of profiles (the asserts of ``Tensor.__init__``);
- strongly typed networks: both operands of an elementwise op and of a matmul must have the same dtype (python
  scalars take the tensor's dtype, as ``constant_to_tensor_`` does); ranks are broadcast by prepending ones
  (``broadcast_helper``);
- ``shape(x, dim)`` is a 0-d int32 tensor; ``concat`` of ints and 0-d tensors builds a shape tensor; ``view`` keeps a
  dim given as 0 (``zero_is_placeholder``) and infers one ``-1``;
- ``allreduce`` / ``allgather`` / ``send`` / ``recv`` go through :mod:`tensorrt_llm._nccl` (the NCCL plugins);
- ``gpt_attention`` is the GPT-attention plugin, executed by :mod:`tensorrt_llm._kernels.attention`.
GEMMs run one token row at a time (``rowwise_mm``) so results are independent of the batch's composition.
"""

from __future__ import annotations

import builtins
from collections import OrderedDict
from enum import IntEnum

import numpy as np
import tensorrt as trt
import torch
import torch.nn.functional as F

from tensorrt_llm import _nccl
from tensorrt_llm._utils import str_dtype_to_trt, torch_dtype_to_trt, trt_dtype_to_torch
from tensorrt_llm.network import default_net


class PositionEmbeddingType(IntEnum):
    learned_absolute = 0
    rope_gptj = 1
    rope_gpt_neox = 2
    long_rope = 3
    alibi = 4
    alibi_with_scale = 5
    relative = 6
    chatglm = 7
    yarn = 8
    mrope = 9

    def is_rope(self) -> bool:
        return self in (self.rope_gptj, self.rope_gpt_neox, self.long_rope, self.mrope)

    @staticmethod
    def from_string(s: str) -> PositionEmbeddingType:
        return PositionEmbeddingType[s]

    def __str__(self) -> str:
        return self.name


class AttentionMaskType(IntEnum):
    padding = 0
    causal = 1
    sliding_window_causal = 2
    bidirectional = 3
    bidirectionalglm = 4
    blocksparse = 5
    custom_mask = 6


class SideStreamIDType(IntEnum):
    disable = 0
    moe = 1


class DimRange:
    """One optimization profile of an input: per dim ``min``/``opt``/``max`` (a static dim has one value)."""

    def __init__(self, shape, names) -> None:
        self.min, self.opt, self.max = [], [], []
        for dim in shape:
            low, opt, high = (dim if isinstance(dim, (list, tuple)) else (dim, dim, dim))
            self.min.append(low), self.opt.append(opt), self.max.append(high)
        self.dimension_names = list(names)


class Tensor:
    def __init__(self, name=None, dtype=None, shape=None, dim_range=None, is_network_input=True,
                 location=trt.TensorLocation.DEVICE, network=None, trt_tensor=None, *, _value=None):
        if isinstance(dtype, str):
            dtype = str_dtype_to_trt(dtype)
        self.profiles = []
        self._value = _value
        self.is_network_input = is_network_input
        if not is_network_input:
            return
        if dim_range is not None:
            assert isinstance(dim_range, OrderedDict)
            assert len(dim_range) >= 1, f"Each input tensor shall have at least one dimension, tensor '{name}'"
            counts = {len(ranges) for ranges in dim_range.values()}
            assert len(counts) == 1, f"every dim of '{name}' needs the same number of profiles, got {dim_range}"
            assert len(dim_range) == len(shape), f"input '{name}': {len(dim_range)} named dims for shape {shape}"
            for i in range(counts.pop()):
                self.profiles.append(DimRange([ranges[i] for ranges in dim_range.values()], dim_range.keys()))
        default_net()._add_input(self, name, dtype, shape, dim_range)
        self._name, self._dtype, self._shape = name, dtype, tuple(shape)

    # -- value ----------------------------------------------------------------------------------------------------
    def bind(self, value: torch.Tensor) -> None:
        self._value = value

    @property
    def value(self) -> torch.Tensor:
        if self._value is None:
            raise RuntimeError(f"network input '{self._name}' was declared but the runtime did not feed it")
        return self._value

    @property
    def name(self):
        return self._name if self.is_network_input else None

    @property
    def dtype(self) -> trt.DataType:
        return self._dtype if self.is_network_input else torch_dtype_to_trt(self._value.dtype)

    @property
    def shape(self) -> tuple:
        return self._shape if self._value is None else tuple(self._value.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def rank(self) -> int:
        return len(self.shape)

    ndim = rank

    def mark_output(self, name=None, dtype=None) -> None:
        if isinstance(dtype, str):
            dtype = str_dtype_to_trt(dtype)
        assert dtype is None or isinstance(dtype, trt.DataType)
        default_net()._mark_output(self, name, dtype)

    # -- methods that are functional ops ---------------------------------------------------------------------------
    def view(self, shape, zero_is_placeholder=True):
        return view(self, shape, zero_is_placeholder)

    def cast(self, dtype):
        return cast(self, dtype)

    def split(self, split_size_or_sections, dim=0):
        return split(self, split_size_or_sections, dim)

    def unsqueeze(self, dim):
        return unsqueeze(self, dim)

    def __add__(self, b):
        return _elementwise(self, b, torch.add)

    def __radd__(self, b):
        return _elementwise(b, self, torch.add)

    def __sub__(self, b):
        return _elementwise(self, b, torch.sub)

    def __rsub__(self, b):
        return _elementwise(b, self, torch.sub)

    def __mul__(self, b):
        return _elementwise(self, b, torch.mul)

    def __rmul__(self, b):
        return _elementwise(b, self, torch.mul)

    def __truediv__(self, b):
        return _elementwise(self, b, torch.div)

    def __repr__(self) -> str:
        return f"Tensor(name={self.name}, dtype={self.dtype!r}, shape={list(self.shape)})"


def wrap(value: torch.Tensor) -> Tensor:
    """An op result (not a network input)."""
    return Tensor(is_network_input=False, _value=value)


def _operand(x, like: Tensor) -> torch.Tensor:
    if isinstance(x, Tensor):
        return x.value
    return torch.tensor(x, dtype=like.value.dtype)  # constant_to_tensor_: a scalar takes the tensor's dtype


def _elementwise(a, b, op) -> Tensor:
    tensors = [t for t in (a, b) if isinstance(t, Tensor)]
    if len(tensors) == 2 and a.dtype != b.dtype:
        raise TypeError(f"elementwise op on {a.dtype!r} and {b.dtype!r}: a strongly typed network needs equal "
                        "dtypes (cast first)")
    left, right = _operand(a, tensors[0]), _operand(b, tensors[0])
    if left.dim() and right.dim() and left.dim() != right.dim():  # broadcast_helper: prepend ones
        rank = max(left.dim(), right.dim())
        left, right = left.reshape((1,) * (rank - left.dim()) + left.shape), right.reshape(
            (1,) * (rank - right.dim()) + right.shape)
    return wrap(op(left, right))


def constant(ndarray) -> Tensor:
    return wrap(torch.from_numpy(np.ascontiguousarray(ndarray)))


def cast(input: Tensor, dtype) -> Tensor:
    dtype = str_dtype_to_trt(dtype) if isinstance(dtype, str) else dtype
    return wrap(input.value.to(trt_dtype_to_torch(dtype)))


def shape(input: Tensor, dim=None, cast_to_dtype=None, clip_before_cast=None) -> Tensor:
    if dim is None:
        return wrap(torch.tensor(input.shape, dtype=torch.int32))
    return wrap(torch.tensor(input.shape[dim], dtype=torch.int32))


def concat(inputs, dim=0) -> Tensor:
    parts = []
    for item in inputs:
        if isinstance(item, int):
            parts.append(torch.tensor([item], dtype=torch.int32))
        else:
            value = item.value
            parts.append(value.reshape(1) if value.dim() == 0 else value)
    if len({p.dtype for p in parts}) != 1:
        raise TypeError(f"concat of different dtypes {[p.dtype for p in parts]}")
    return wrap(torch.cat(parts, dim=dim))


def view(input: Tensor, shape, zero_is_placeholder=True) -> Tensor:
    sizes = [int(s) for s in (shape.value.tolist() if isinstance(shape, Tensor) else shape)]
    if zero_is_placeholder:
        sizes = [input.shape[i] if s == 0 else s for i, s in enumerate(sizes)]
    return wrap(input.value.reshape(sizes))


def split(tensor: Tensor, split_size_or_sections, dim=0):
    dim = dim % tensor.ndim()
    if isinstance(split_size_or_sections, int):
        if tensor.shape[dim] % split_size_or_sections:
            raise ValueError(f"split: dim {dim} of size {tensor.shape[dim]} is not a multiple of "
                             f"{split_size_or_sections}")
    elif builtins.sum(split_size_or_sections) != tensor.shape[dim]:
        raise ValueError(f"split: sections {split_size_or_sections} do not add up to {tensor.shape[dim]}")
    return [wrap(part) for part in torch.split(tensor.value, split_size_or_sections, dim=dim)]


def chunk(tensor: Tensor, chunks: int, dim=0):
    return split(tensor, tensor.shape[dim] // chunks, dim)


def unsqueeze(input: Tensor, axis: int) -> Tensor:
    return wrap(input.value.unsqueeze(axis))


def cos(input: Tensor) -> Tensor:
    return wrap(torch.cos(input.value))


def sin(input: Tensor) -> Tensor:
    return wrap(torch.sin(input.value))


def sigmoid(input: Tensor) -> Tensor:
    return wrap(torch.sigmoid(input.value))


def silu(input: Tensor) -> Tensor:
    return wrap(F.silu(input.value.float()).to(input.value.dtype))


def swiglu(input: Tensor) -> Tensor:
    """``x, gate = chunk(input, 2, dim=-1); silu(gate) * x``: the *second* half is activated."""
    x, gate = chunk(input, 2, dim=input.ndim() - 1)
    return silu(gate) * x


ACT2FN = {"silu": silu, "swiglu": swiglu, "sigmoid": sigmoid}


def matmul(input: Tensor, mat2: Tensor, transa=False, transb=False, use_fp32_acc=True) -> Tensor:
    if input.dtype != mat2.dtype:
        raise TypeError(f"matmul of {input.dtype!r} and {mat2.dtype!r}: a strongly typed network needs equal dtypes")
    a, b = input.value, mat2.value
    a, b = (a.transpose(-1, -2) if transa else a), (b.transpose(-1, -2) if transb else b)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: inner dims {a.shape[-1]} and {b.shape[-2]} differ ({list(a.shape)} x "
                         f"{list(b.shape)})")
    return wrap(rowwise_mm(a.float(), b.float()).to(a.dtype))  # GEMMs accumulate in float32


def rowwise_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` one row of ``a`` at a time: the result of a token does not depend on how many tokens share the
    batch (CPU BLAS picks other kernels for other row counts; FP8 rounding would turn their 1-ulp differences into
    1e-2 ones), so a packed in-flight batch computes what one request alone computes."""
    if a.dim() != 2 or a.shape[0] <= 1:
        return a @ b
    return torch.cat([a[i:i + 1] @ b for i in range(a.shape[0])])


def embedding(input: Tensor, weight: Tensor, tp_size=1, tp_group=None, sharding_dim=0, tp_rank=None) -> Tensor:
    """Rows of ``weight`` [V_local, H]; vocab-parallel (sharding_dim 0): ids outside this rank's rows give zeros and
    the ranks' outputs are all-reduced; hidden-parallel (sharding_dim 1): outputs are all-gathered on the last dim."""
    ids, table = input.value.long(), weight.value
    if tp_size == 1:
        return wrap(F.embedding(ids, table))
    if sharding_dim == 1:
        return allgather(wrap(F.embedding(ids, table)), tp_group, gather_dim=-1)
    first = tp_rank * table.shape[0]
    local = ids - first
    inside = (local >= 0) & (local < table.shape[0])
    rows = F.embedding(local.clamp(0, table.shape[0] - 1), table) * inside.unsqueeze(-1).to(table.dtype)
    return allreduce(wrap(rows), tp_group)


def rms_norm(input: Tensor, normalized_shape, num_groups=1, weight=None, eps=1e-06) -> Tensor:
    """In float32 (strongly typed: cast, normalize, cast back), then times ``weight`` in the input dtype."""
    x = input.value
    dims = tuple(range(-len(normalized_shape if isinstance(normalized_shape, (list, tuple)) else [0]), 0))
    normed = (x.float() * torch.rsqrt(x.float().pow(2).mean(dims, keepdim=True) + eps)).to(x.dtype)
    return wrap(normed) if weight is None else wrap(normed) * weight


def allreduce(tensor: Tensor, group, all_reduce_params=None) -> Tensor:
    world, rank = _nccl.current()
    parts = world.exchange(tuple(group), rank, tensor.value)
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return wrap(total)


def allgather(tensor: Tensor, group, gather_dim=0) -> Tensor:
    world, rank = _nccl.current()
    return wrap(torch.cat(world.exchange(tuple(group), rank, tensor.value), dim=gather_dim))


def send(tensor: Tensor, tgt: int) -> Tensor:
    world, rank = _nccl.current()
    world.post(rank, tgt, tensor.value)
    return tensor


def recv(tensor: Tensor, src: int) -> Tensor:
    """Receives into a buffer shaped like ``tensor`` (the stage's ``hidden_states_input``)."""
    world, rank = _nccl.current()
    received = world.take(src, rank)
    if tuple(received.shape) != tuple(tensor.shape) or received.dtype != tensor.value.dtype:
        raise ValueError(f"recv on rank {rank}: got {list(received.shape)} {received.dtype}, the buffer is "
                         f"{list(tensor.shape)} {tensor.value.dtype}")
    return wrap(received)


def topk(input: Tensor, k, dim, largest=True, prefer_plugin=True) -> tuple[Tensor, Tensor]:
    """(values, int32 indices) of the ``k`` largest (or smallest) entries along ``dim``, sorted."""
    values, indices = torch.topk(input.value, int(k), dim=dim, largest=largest)
    return wrap(values), wrap(indices.to(torch.int32))


def gather(input: Tensor, dim: int, indices) -> Tensor:
    """GatherElements: ``out[i][j] = input[i][indices[i][j]]`` along ``dim``."""
    return wrap(torch.gather(input.value, dim, indices.value.long()))


def sum(input: Tensor, dim: int, keepdim: bool = False) -> Tensor:  # noqa: A001 (TensorRT-LLM's name)
    return wrap(torch.sum(input.value, dim=dim, keepdim=keepdim))


def index_select(input: Tensor, dim: int, index: Tensor) -> Tensor:
    return wrap(torch.index_select(input.value, dim, index.value.long()))


def gather_last_token_logits(hidden_states: Tensor, last_token_ids: Tensor, remove_input_padding: bool) -> Tensor:
    """Packed input: ``last_token_ids`` are 1-based cumulative lengths; one row per request."""
    if last_token_ids is None:
        return hidden_states
    if not remove_input_padding:
        raise NotImplementedError("stand-in: only remove_input_padding is modelled")
    return index_select(hidden_states, 0, wrap(last_token_ids.value - 1))


_GPT_ATTENTION_KEYWORDS = frozenset((
    "qkv past_key_value attention_mask attention_packed_mask sequence_length host_past_key_value_lengths "
    "host_max_attention_window_sizes host_sink_token_length context_lengths cache_indirection host_request_types "
    "layer_idx num_heads num_kv_heads hidden_size_per_head q_scaling attn_logit_softcapping_scale "
    "rotary_embedding_dim rotary_embedding_base rotary_embedding_scale_type rotary_embedding_short_m_scale "
    "rotary_embedding_long_m_scale rotary_embedding_scale rotary_embedding_max_positions "
    "rotary_embedding_original_max_positions position_embedding_type rotary_inv_freq rotary_cos_sin "
    "kv_orig_quant_scale kv_quant_orig_scale attention_output_orig_quant_scale attention_output_sf_scale "
    "kv_cache_quant_mode max_context_length mask_type block_sparse_block_size block_sparse_homo_head_pattern "
    "block_sparse_num_local_blocks block_sparse_vertical_stride alibi_slopes tp_size tp_rank vision_start "
    "vision_length kv_cache_block_offsets host_kv_cache_block_offsets host_kv_cache_pool_pointers "
    "host_kv_cache_pool_mapping do_cross_attention cross_kv cross_kv_length encoder_input_lengths "
    "relative_attention_bias logn_scaling max_distance host_context_lengths qkv_bias use_cache "
    "spec_decoding_is_generation_length_variable spec_decoding_max_generation_length "
    "spec_decoding_generation_lengths spec_decoding_position_offsets spec_decoding_packed_mask spec_decoding_use "
    "long_rope_rotary_inv_freq long_rope_rotary_cos_sin mrope_rotary_cos_sin mrope_position_deltas "
    "host_runtime_perf_knobs host_context_progress is_mla_enabled_flag q_lora_rank kv_lora_rank "
    "qk_nope_head_dim qk_rope_head_dim v_head_dim q_b_proj kv_b_proj k_b_proj_trans skip_attn cp_group cp_size "
    "cp_rank num_kv_heads_origin").split())


def gpt_attention(**kwargs):
    """The GPT-attention plugin (keyword-only, the 1.2.x parameter list): returns ``(context, present)``."""
    unknown = sorted(set(kwargs) - _GPT_ATTENTION_KEYWORDS)
    if unknown:
        raise TypeError(f"gpt_attention() got unexpected keyword arguments {unknown}")
    from tensorrt_llm._kernels.attention import run_gpt_attention

    return run_gpt_attention(**kwargs)
