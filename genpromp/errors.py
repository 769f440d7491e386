"""User-facing errors: each message names the file, row or key at fault and what to do."""

__all__ = ["GenprompError", "InputError", "ConfigError"]


class GenprompError(Exception):
    """Base class of every error genpromp raises on purpose."""


class InputError(GenprompError):
    """A file given to genpromp (dataset, scores, checkpoint, CAM cache) is malformed."""

    def __init__(self, path, message, line=None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class ConfigError(GenprompError):
    """The workflow configuration is invalid; the message names the key."""
