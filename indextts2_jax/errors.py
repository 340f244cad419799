"""Exception classes for bad input. Every message names the offending file, text or key.

Catch ``IndexTTS2Error`` to handle all of them; the data pipeline catches ``InputError``
subclasses to skip and count bad examples.
"""


class IndexTTS2Error(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(IndexTTS2Error, ValueError):
    """Bad user or dataset input (audio, text)."""


# --- audio -------------------------------------------------------------------------------
class AudioError(InputError):
    """Base class for audio problems; ``path`` is the file (or None for arrays)."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """The audio file does not exist."""


class AudioDecodeError(AudioError):
    """The file exists but cannot be decoded (corrupt, empty or not audio)."""


class SilentAudioError(AudioError):
    """The audio is empty or all silence."""


class AudioTooShortError(AudioError):
    """The audio is shorter than the minimum (0.1 s by default)."""


class AudioTooLongError(AudioError):
    """The audio is longer than the configured maximum."""


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or Inf samples."""


class SampleRateError(AudioError):
    """The audio has a sample rate that the caller did not allow."""


class ChannelError(AudioError):
    """The audio has a channel layout that the caller did not allow."""


# --- text --------------------------------------------------------------------------------
class TextError(InputError):
    """Base class for text problems; ``text`` is the offending input."""

    def __init__(self, message: str, text=None):
        super().__init__(message)
        self.text = text


class EmptyTextError(TextError):
    """The text is empty or only whitespace."""


class UnpronounceableTextError(TextError):
    """The text holds only punctuation or characters the tokenizer does not know."""


class TextTooLongError(TextError):
    """The text (or one segment of it) exceeds the configured maximum."""


# --- configs and checkpoints ----------------------------------------------------------------
class ConfigError(IndexTTS2Error, ValueError):
    """A config string or file is malformed, has unknown keys or wrongly typed values."""


class CheckpointError(IndexTTS2Error, ValueError):
    """A checkpoint does not match the model: missing/unexpected keys or shape mismatches."""


class MissingComponentsError(CheckpointError):
    """A loader was asked for components (``components=``) that the model does not have."""


class ModelDirectoryError(IndexTTS2Error, FileNotFoundError):
    """An official model directory lacks required files (the message lists them)."""
