"""Logits from transformers' own ``hunyuan_v1_moe`` / ``hunyuan_v1_dense`` / ``hy_v3`` classes: an independent
reference.

The transformers config is built from the :class:`ModelSpec` (never from the model directory's config.json, whose
Tencent dialect and ``auto_map`` transformers cannot or must not use; ``trust_remote_code`` is never set). The
weights are loaded by ``AutoModelForCausalLM.from_pretrained`` from a scratch directory that holds symlinks to the
model's ``*.safetensors`` files (and shard index) next to a config.json written from that transformers config:
``from_pretrained`` otherwise still reads the model directory's generation_config.json or, failing that, its
config.json (for generation defaults), and crashes when a directory has neither.

transformers' conversion mapping fuses Tencent's per-expert ``gate_proj``/``up_proj`` tensors into its
``gate_up_proj`` on load (and, for ``hy_v3``, renames ``mlp.router.gate``/``mlp.expert_bias``/``mlp.shared_mlp``),
so Tencent-named checkpoints load as they are. transformers never builds Hy3's MTP layer: its tensors are the only
ones allowed to stay unused.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from hunyuan_trtllm.checkpoints.spec import LARGE, ModelSpec
from hunyuan_trtllm.errors import CheckpointError, UserError


def transformers_supports(spec: ModelSpec) -> str | None:
    """None when transformers' Hunyuan classes compute exactly this model, else a short reason why not."""
    if spec.architecture == LARGE:
        return "transformers has no Hunyuan-Large (HunYuanForCausalLM) class"
    if spec.is_hy3:
        return _hy3_unsupported(spec)
    if spec.uses_cla:
        return "transformers has no cross-layer attention (CLA)"
    if not spec.use_qk_norm:
        return "transformers always applies the per-head QK norm (use_qk_norm is false)"
    if spec.is_moe:
        if spec.top_k == 1:
            return "transformers renormalises a top-1 routing weight to 1.0 (Tencent keeps the probability)"
        if spec.shared_intermediate_size != spec.intermediate_size:
            return (
                f"shared expert width {spec.shared_intermediate_size} != intermediate_size "
                f"{spec.intermediate_size} (transformers sizes the shared MLP with intermediate_size)"
            )
        if spec.expert_intermediate_size != spec.intermediate_size:
            return (
                f"expert width {spec.expert_intermediate_size} != intermediate_size {spec.intermediate_size} "
                "(transformers sizes the experts with intermediate_size)"
            )
    return None


def _hy3_unsupported(spec: ModelSpec) -> str | None:
    """transformers' ``hy_v3`` always applies the QK norm, the expert bias and renormalisation."""
    if not spec.use_qk_norm:
        return "transformers' hy_v3 always applies the per-head QK norm (qk_norm is false)"
    if not spec.expert_bias:
        return "transformers' hy_v3 always adds an expert bias (moe_router_enable_expert_bias is false)"
    if not spec.route_norm:
        return "transformers' hy_v3 always renormalises the routing weights (route_norm is false)"
    return None


def transformers_logits(
    model_dir: Path,
    spec: ModelSpec,
    prompts: Sequence[Sequence[int]],
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Float32 logits [T, V] per prompt from transformers' class, each prompt run alone (causal, no cache).

    The weights are rounded to ``dtype`` (the converted checkpoint's) and the arithmetic runs in float32, so a
    comparison with the reference executor measures the conversion, not bfloat16 arithmetic.
    """
    reason = transformers_supports(spec)
    if reason is not None:
        raise UserError(f"{model_dir}: transformers cannot serve as a reference for this model: {reason}")
    transformers = _import_transformers()
    model_dir = Path(model_dir)
    weight_files = sorted(model_dir.glob("*.safetensors"))
    if not weight_files:
        raise CheckpointError(f"{model_dir}: no *.safetensors files here")

    with _quiet(transformers):
        model = _load(transformers, model_dir, weight_files, spec, dtype)
        logits = []
        with torch.no_grad():
            for prompt in prompts:
                input_ids = torch.tensor([list(prompt)], dtype=torch.long)  # [1, T]
                out = model(input_ids=input_ids, use_cache=False).logits  # [1, T, V]
                logits.append(out[0].float())
    return logits


def _load(transformers: Any, model_dir: Path, weight_files: list[Path], spec: ModelSpec, dtype: torch.dtype) -> Any:
    """The transformers model with the checkpoint's weights, in eval mode."""
    config = _transformers_config(transformers, spec)
    with tempfile.TemporaryDirectory(prefix="hunyuan-tf-ref-") as scratch:
        staged = Path(scratch)
        for path in [*weight_files, *model_dir.glob("*.safetensors.index.json")]:
            _link(path.resolve(), staged / path.name)
        config.save_pretrained(staged)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            staged,
            config=config,
            dtype=dtype,
            attn_implementation="eager",
            trust_remote_code=False,
            local_files_only=True,
            output_loading_info=True,
        )
    mtp = tuple(f"model.layers.{spec.num_layers + i}." for i in range(spec.num_mtp_layers))
    info["unexpected_keys"] = [key for key in info.get("unexpected_keys", ()) if not key.startswith(mtp)]
    problems = {key: value for key, value in info.items() if value}
    if problems:
        raise CheckpointError(f"{model_dir}: transformers did not load the weights cleanly: {problems}")
    # Guard against a transformers version that reads "dynamic" as length-dependent NTK or ignores alpha.
    d = spec.head_dim
    expected = 1.0 / (spec.rotary_base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # [d/2]
    if not torch.allclose(model.model.rotary_emb.inv_freq.float(), expected, rtol=1e-5, atol=0.0):
        raise UserError(f"transformers {transformers.__version__} does not build RoPE base {spec.rotary_base:.6g}")
    return model.float().eval()  # weights rounded to `dtype`, arithmetic in float32


def _transformers_config(transformers: Any, spec: ModelSpec) -> Any:
    """A transformers ``hunyuan_v1_moe`` / ``hunyuan_v1_dense`` config object describing ``spec``."""
    if spec.rope_alpha != 1.0:
        # "dynamic" + alpha: transformers' Hunyuan classes treat it as a fixed NTK-alpha base (rope_type ntk_alpha).
        rope = {"rope_type": "dynamic", "alpha": spec.rope_alpha, "factor": 1.0, "rope_theta": spec.rope_theta}
    else:
        rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    pad = spec.pad_token_id if spec.pad_token_id is not None and spec.pad_token_id < spec.vocab_size else None
    common: dict[str, Any] = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        hidden_act="silu",
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters=rope,
        attention_bias=False,
        attention_dropout=0.0,
        pad_token_id=pad,
        eos_token_id=list(spec.eos_token_ids) or None,
    )
    if spec.is_hy3:
        config = transformers.AutoConfig.for_model(
            "hy_v3", num_experts=spec.num_experts, num_experts_per_tok=spec.top_k,
            num_shared_experts=spec.shared_intermediate_size // spec.expert_intermediate_size,
            moe_intermediate_size=spec.expert_intermediate_size, router_scaling_factor=spec.routed_scaling_factor,
            mlp_layer_types=["sparse" if spec.is_moe_layer(i) else "dense" for i in range(spec.num_layers)],
            enable_moe_fp32_combine=False, **common
        )
    elif spec.is_moe:
        config = transformers.AutoConfig.for_model(
            "hunyuan_v1_moe", num_experts=spec.num_experts, moe_topk=spec.top_k, **common
        )
    else:
        config = transformers.AutoConfig.for_model("hunyuan_v1_dense", **common)
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    return config


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "the transformers reference needs the 'transformers' package: install the 'test' extra "
            "(pip install 'hunyuan-trtllm[test]')"
        ) from None
    return transformers


def _link(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source)
    except OSError:  # file systems without symlinks
        shutil.copy2(source, target)


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """Silence transformers' logging, progress bars and Python warnings for the duration of a load."""
    tf_logging = transformers.utils.logging
    verbosity = tf_logging.get_verbosity()
    bars_were_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            tf_logging.enable_progress_bar()
