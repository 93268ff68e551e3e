"""tensorrt_llm/functional.py: the enums the model definition reads, and its graph operations (which raise here).

``PositionEmbeddingType`` (IntEnum, ``from_string``, ``is_rope()``, ``str()`` is the name) and
``AttentionMaskType`` (IntEnum) carry TensorRT-LLM's values.
"""

from enum import IntEnum


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
        return self in (self.rope_gptj, self.rope_gpt_neox, self.long_rope, self.yarn, self.mrope)

    @staticmethod
    def from_string(s: str) -> "PositionEmbeddingType":
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


class Tensor:
    """A network tensor: only the real TensorRT-LLM builds networks."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("building a TensorRT network needs the real TensorRT-LLM")


def _graph_op(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(f"functional.{name}: building a TensorRT network needs the real TensorRT-LLM")

    op.__name__ = name
    return op


cast, concat, constant, cos, sin = (_graph_op(n) for n in ("cast", "concat", "constant", "cos", "sin"))
gpt_attention, recv, send, shape = (_graph_op(n) for n in ("gpt_attention", "recv", "send", "shape"))
split, unsqueeze = _graph_op("split"), _graph_op("unsqueeze")
allreduce, gather, sigmoid, sum, topk = (_graph_op(n) for n in ("allreduce", "gather", "sigmoid", "sum", "topk"))
