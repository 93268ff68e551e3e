"""tensorrt_llm/models/__init__.py: ``MODEL_MAP`` maps config.json's ``architecture`` to the model class
(``PretrainedConfig.from_dict`` looks the config class up through it)."""

MODEL_MAP: dict = {}
