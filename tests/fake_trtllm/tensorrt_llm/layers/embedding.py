"""tensorrt_llm/layers/embedding.py: ``Embedding(num_embeddings, embedding_dim, dtype=None, tp_size=1,
tp_group=None, sharding_dim=0, tp_rank=None)`` declares ``weight [ceil(num_embeddings / tp_size), embedding_dim]``
(sharding_dim 0; tp_size stays 1 unless ``use_parallel_embedding``)."""

import math

from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, tp_size=1, tp_group=None, sharding_dim=0,
                 tp_rank=None):
        super().__init__()
        if sharding_dim != 0:
            raise NotImplementedError("stand-in: only sharding_dim 0 is modelled")
        self.weight = Parameter(shape=(math.ceil(num_embeddings / tp_size), embedding_dim), dtype=dtype)
