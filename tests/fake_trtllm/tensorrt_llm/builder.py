"""tensorrt_llm/builder.py: ``EngineConfig.from_json_file`` reads an engine directory's config.json
(``{"version", "pretrained_config", "build_config"}``) and builds the pretrained config with
``PretrainedConfig.from_dict``, i.e. through ``MODEL_MAP[architecture]`` (trtllm-serve's TensorRT backend and its
rank-0 worker do this: llmapi/llm_args.py ``_load_config_from_engine``, executor/base_worker.py)."""

import json


class EngineConfig:
    def __init__(self, pretrained_config, build_config: dict, version: str) -> None:
        self.pretrained_config, self.build_config, self.version = pretrained_config, build_config, version

    @classmethod
    def from_json_file(cls, config_file) -> "EngineConfig":
        from tensorrt_llm.models.modeling_utils import PretrainedConfig

        with open(config_file) as f:
            config = json.load(f)
        return cls(PretrainedConfig.from_dict(config["pretrained_config"]), config["build_config"], config["version"])
