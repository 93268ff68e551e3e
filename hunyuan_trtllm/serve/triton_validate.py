"""Check a Triton model repository before a server sees it; every problem is reported in one :class:`UserError`.

Checks: every ``config.pbtxt`` parses as ``inference.ModelConfig`` and names its directory; no ``${...}``
placeholder is left in any file; Python models have ``1/model.py``; paths named by parameters exist
(``gpt_model_path`` with its ``config.json``, ``tokenizer_dir``, ``checkpoint_dir``, the LLM-API ``model``);
ensembles only wire existing models and tensors, with matching data types, every required input fed and every
output produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.pbtxt import parse

PATH_PARAMETERS = ("tokenizer_dir", "checkpoint_dir")


def validate_repo(path: Path) -> list[str]:
    """Return the model names of the repository at ``path``; raise :class:`UserError` listing every problem."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a model repository (no such directory)")
    problems = [f"{file.relative_to(path)}: unfilled placeholder '${{'" for file in sorted(path.rglob("*"))
                if file.is_file() and "${" in file.read_text(encoding="utf-8", errors="replace")]
    configs: dict[str, Any] = {}
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_file = model_dir / "config.pbtxt"
        if not config_file.is_file():
            problems.append(f"{model_dir.name}: no config.pbtxt")
            continue
        try:
            configs[model_dir.name] = parse(config_file.read_text(encoding="utf-8"), str(config_file))
        except UserError as exc:
            problems.append(str(exc))
    if not configs and not problems:
        problems.append("no model directories")
    for name, config in configs.items():
        problems += [f"{name}: {p}" for p in _model_problems(path / name, config)]
        if config.platform == "ensemble":
            problems += [f"{name}: {p}" for p in _ensemble_problems(config, configs)]
    if problems:
        raise UserError(f"{path}: invalid Triton model repository:\n  " + "\n  ".join(problems))
    return sorted(configs)


def _model_problems(model_dir: Path, config: Any) -> list[str]:
    problems = []
    if config.name != model_dir.name:
        problems.append(f"config name '{config.name}' differs from its directory")
    if not (model_dir / "1").is_dir():
        problems.append("no version directory 1/")
    if config.backend == "python" and not (model_dir / "1" / "model.py").is_file():
        problems.append("python backend without 1/model.py")
    if not config.backend and config.platform != "ensemble":
        problems.append("neither a backend nor the ensemble platform")
    params = {key: value.string_value for key, value in config.parameters.items()}
    for key in PATH_PARAMETERS:
        if key in params and not Path(params[key]).is_dir():
            problems.append(f"parameter {key}: {params[key]} is not a directory")
    if config.backend == "tensorrtllm" and not (Path(params.get("gpt_model_path", "")) / "config.json").is_file():
        problems.append(f"parameter gpt_model_path: no engine config.json in '{params.get('gpt_model_path', '')}'")
    if (model_dir / "1" / "model.yaml").is_file():
        problems += _llmapi_problems(model_dir / "1" / "model.yaml", config)
    return problems


def _llmapi_problems(path: Path, config: Any) -> list[str]:
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return [f"1/model.yaml is not valid YAML ({exc})"]
    if not isinstance(settings, dict) or not settings.get("model"):
        return ["1/model.yaml has no 'model'"]
    model = settings["model"]
    problems = [] if Path(model).is_dir() else [f"1/model.yaml model {model} is not a directory"]
    decoupled = (settings.get("triton_config") or {}).get("decoupled", False)
    if decoupled != config.model_transaction_policy.decoupled:
        problems.append("1/model.yaml triton_config.decoupled differs from config.pbtxt")
    return problems


def _ensemble_problems(config: Any, configs: dict[str, Any]) -> list[str]:
    """Wiring of an ensemble: models, tensor names, data types, required inputs, produced outputs."""
    problems: list[str] = []
    available = {t.name: t.data_type for t in config.input}  # tensor name -> data type
    for number, step in enumerate(config.ensemble_scheduling.step, start=1):
        target = configs.get(step.model_name)
        if target is None:
            problems.append(f"step {number}: model '{step.model_name}' is not in the repository")
            continue
        inputs = {t.name: t for t in target.input}
        outputs = {t.name: t for t in target.output}
        for key, value in step.input_map.items():
            if key not in inputs:
                problems.append(f"step {number}: '{step.model_name}' has no input '{key}'")
            elif value not in available:
                problems.append(f"step {number}: '{value}' is not an ensemble input or an earlier step's output")
            elif available[value] != inputs[key].data_type:
                problems.append(f"step {number}: '{value}' feeds '{key}' of another data type")
        missing = [name for name, t in inputs.items() if not t.optional and name not in step.input_map]
        problems += [f"step {number}: required input '{name}' of '{step.model_name}' is not fed" for name in missing]
        for key, value in step.output_map.items():
            if key not in outputs:
                problems.append(f"step {number}: '{step.model_name}' has no output '{key}'")
            else:
                available[value] = outputs[key].data_type
    for output in config.output:
        if output.name not in available:
            problems.append(f"output '{output.name}' is produced by no step")
        elif available[output.name] != output.data_type:
            problems.append(f"output '{output.name}' has another data type than the step producing it")
    return problems
