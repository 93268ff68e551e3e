"""tensorrt_llm/layers/embedding.py: ``Embedding(num_embeddings, embedding_dim, dtype=None, tp_size=1,
tp_group=None, sharding_dim=0, tp_rank=None)``.

``weight`` is ``[ceil(num_embeddings / tp_size), embedding_dim]`` (sharding_dim 0) or ``[num_embeddings,
embedding_dim / tp_size]`` (sharding_dim 1); tp_size stays 1 unless ``use_parallel_embedding``. ``forward(x)`` is
``functional.embedding`` (vocab-parallel: out-of-shard ids give zeros and the ranks' rows are all-reduced;
hidden-parallel: all-gathered). The p-tuning arguments (prompt_embedding_table, tasks, task_vocab_size) are not
modelled.
"""

import math

from tensorrt_llm.functional import embedding
from tensorrt_llm.module import Module
from tensorrt_llm.parameter import Parameter


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, tp_size=1, tp_group=None, sharding_dim=0,
                 tp_rank=None):
        super().__init__()
        self.tp_size, self.tp_group, self.sharding_dim, self.tp_rank = tp_size, tp_group, sharding_dim, tp_rank
        if sharding_dim == 0:
            shape = (math.ceil(num_embeddings / tp_size), embedding_dim)
        elif sharding_dim == 1:
            shape = (num_embeddings, embedding_dim // tp_size)
        else:
            raise ValueError(f"Embedding: sharding_dim {sharding_dim} is neither 0 nor 1")
        self.weight = Parameter(shape=shape, dtype=dtype)

    def forward(self, x, prompt_embedding_table=None, tasks=None, task_vocab_size=None):
        if prompt_embedding_table is not None:
            raise NotImplementedError("stand-in: p-tuning prompt tables are not modelled")
        return embedding(x, self.weight.value, tp_size=self.tp_size, tp_group=self.tp_group,
                         sharding_dim=self.sharding_dim, tp_rank=self.tp_rank)
