"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input (a file, a tensor, a flag). Printed as one line, exit code 2."""


class ConfigError(UserError):
    """The model's config.json is missing, malformed or describes something we do not support."""


class CheckpointError(UserError):
    """A checkpoint file or tensor is missing, truncated or of the wrong shape or dtype."""


class MappingError(UserError):
    """The requested parallel layout (tp/ep/pp) does not fit the model."""
