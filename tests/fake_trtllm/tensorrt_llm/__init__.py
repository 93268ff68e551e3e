"""A recording stand-in for TensorRT-LLM 1.2.1 (TensorRT-engine backend): declarations only, no graph, no GPU.

It implements exactly the constructors, config classes and passes the Hunyuan model definition
(``hunyuan_trtllm/plugins``) relies on, and each one declares the parameters (names, per-rank shapes, dtypes) that
TensorRT-LLM's real class declares. Every module says which TensorRT-LLM source file its facts come from (see
``hunyuan_trtllm/plugins/trtllm_1_2_1_symbols.json`` for the revisions read). Graph operations
(``tensorrt_llm.functional``) raise: building a network needs the real TensorRT-LLM.

Dtypes are TensorRT-LLM's strings (``"bfloat16"``, ``"float32"``, ``"fp8"``, ...).
"""

__version__ = "1.2.1"
