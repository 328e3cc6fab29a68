"""Errors of the media layer; PyAV's exceptions are converted to these at the boundary."""


class MediaError(Exception):
    """Base of media errors."""


class AudioFileError(MediaError):
    """An audio file is missing, empty, or not audio."""
