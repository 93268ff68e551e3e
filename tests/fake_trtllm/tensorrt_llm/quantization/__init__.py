"""tensorrt_llm/quantization/mode.py: ``QuantMode`` flags, here only what ``quant_algo: FP8`` and
``kv_cache_quant_algo: FP8`` set (per-tensor FP8 QDQ; FP8 KV cache)."""


class QuantMode:
    def __init__(self, fp8_qdq: bool = False, fp8_kv_cache: bool = False) -> None:
        self.fp8_qdq, self.fp8_kv_cache = fp8_qdq, fp8_kv_cache

    @classmethod
    def from_quant_algo(cls, quant_algo=None, kv_cache_quant_algo=None) -> "QuantMode":
        supported = (None, "FP8")
        if quant_algo not in supported or kv_cache_quant_algo not in supported:
            raise NotImplementedError(f"stand-in: only FP8 is modelled, got {quant_algo}, {kv_cache_quant_algo}")
        return cls(quant_algo == "FP8", kv_cache_quant_algo == "FP8")

    def has_fp8_qdq(self) -> bool:
        return self.fp8_qdq

    def has_fp8_kv_cache(self) -> bool:
        return self.fp8_kv_cache

    def has_kv_cache_quant(self) -> bool:
        return self.fp8_kv_cache

    def __eq__(self, other) -> bool:
        return isinstance(other, QuantMode) and vars(self) == vars(other)


NO_QUANT = QuantMode()  # QuantMode(0), the default of every layer constructor
