"""tensorrt_llm/mapping.py (1.2.x ``Mapping``): rank arithmetic of a TP x PP (x MoE TP x EP) layout.

- ``tp_rank = rank % tp_size``, ``pp_rank = rank // (tp_size * cp_size)``;
- MoE parallelism is carved out of TP: ``moe_tp_size * moe_ep_size * moe_cluster_size == tp_size``; when neither
  is given, ``moe_tp_size = tp_size`` and ``moe_ep_size = 1``; ``moe_ep_rank = tp_rank % moe_ep_size``,
  ``moe_tp_rank = tp_rank // (moe_ep_size * moe_cluster_size)``;
- ``pp_layers(n)``: ``torch.tensor_split`` of ``range(n)`` (the first ``n % pp`` stages get one extra layer);
- ``tp_group``: the global ranks of this rank's TP group; ``prev_pp_rank``/``next_pp_rank``: rank -/+ tp * cp.
The constructor takes the 1.2-era keywords (``cp_config``, ``pp_partition``, ``enable_attention_dp``, ...; no
``auto_parallel``, which the newest ``Mapping`` read no longer has); only the sizes and ranks above are modelled.
"""


class Mapping:
    def __init__(self, world_size=1, rank=0, gpus_per_node=8, *, cp_size=1, cp_config=None, tp_size=1, pp_size=1,
                 pp_partition=None, moe_cluster_size=-1, moe_tp_size=-1, moe_ep_size=-1, attn_tp_size=-1,
                 attn_cp_size=-1, enable_attention_dp=False, enable_lm_head_tp_in_adp=False):
        moe_cluster_size = 1 if moe_cluster_size == -1 else moe_cluster_size
        if moe_tp_size == -1 and moe_ep_size == -1:
            moe_tp_size, moe_ep_size = tp_size // moe_cluster_size, 1
        elif moe_tp_size == -1:
            moe_tp_size = tp_size // (moe_ep_size * moe_cluster_size)
        elif moe_ep_size == -1:
            moe_ep_size = tp_size // (moe_tp_size * moe_cluster_size)
        if tp_size * pp_size * cp_size != world_size:
            raise ValueError(f"world_size {world_size} != tp {tp_size} * pp {pp_size} * cp {cp_size}")
        if moe_tp_size * moe_ep_size * moe_cluster_size != tp_size:
            raise ValueError("moe_tp_size * moe_ep_size * moe_cluster_size must equal tp_size")
        self.world_size, self.rank, self.gpus_per_node = world_size, rank, gpus_per_node
        self.cp_size, self.tp_size, self.pp_size = cp_size, tp_size, pp_size
        self.moe_tp_size, self.moe_ep_size, self.moe_cluster_size = moe_tp_size, moe_ep_size, moe_cluster_size

    @classmethod
    def from_dict(cls, mapping: dict) -> "Mapping":
        return cls(**mapping)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp_size * self.cp_size)

    @property
    def moe_ep_rank(self) -> int:
        return self.tp_rank % self.moe_ep_size

    @property
    def moe_tp_rank(self) -> int:
        return self.tp_rank // (self.moe_ep_size * self.moe_cluster_size)

    @property
    def tp_group(self) -> list:
        first = self.pp_rank * self.tp_size
        return list(range(first, first + self.tp_size))

    def has_moe_ep(self) -> bool:
        return self.moe_ep_size > 1

    def has_moe_tp(self) -> bool:
        return self.moe_tp_size > 1

    def prev_pp_rank(self) -> int:
        return self.rank - self.tp_size * self.cp_size

    def next_pp_rank(self) -> int:
        return self.rank + self.tp_size * self.cp_size

    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def pp_layers(self, num_layers: int) -> list:
        base, extra = divmod(num_layers, self.pp_size)
        start = self.pp_rank * base + min(self.pp_rank, extra)
        return list(range(start, start + base + (1 if self.pp_rank < extra else 0)))

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "rank": self.rank, "gpus_per_node": self.gpus_per_node,
                "cp_size": self.cp_size, "tp_size": self.tp_size, "pp_size": self.pp_size,
                "moe_tp_size": self.moe_tp_size, "moe_cluster_size": self.moe_cluster_size,
                "moe_ep_size": self.moe_ep_size}


SINGLE_GPU = Mapping()  # Mapping(), the default of the MoE constructors
