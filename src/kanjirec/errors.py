"""Errors a user can act on. The CLI prints them without a traceback."""


class KanjirecError(Exception):
    """Base class: the message names the file, record or field at fault."""


class DatasetFormatError(KanjirecError):
    """A packed dataset (or a source file) is missing, truncated or inconsistent."""


class EtlFormatError(KanjirecError):
    """An ETL file does not match its published record layout."""


class ImageInputError(KanjirecError):
    """An input image file that is missing, not an image, truncated, or over the pixel limit."""


class CheckpointError(KanjirecError):
    """A checkpoint is unreadable or belongs to another model, class list or config."""


class ConfigError(KanjirecError, ValueError):
    """A training config (file, flag or --set item) names an unknown key or has a bad value."""


class ModelConfigError(KanjirecError, ValueError):
    """An unknown model name, or a config key the model's constructor does not take."""
