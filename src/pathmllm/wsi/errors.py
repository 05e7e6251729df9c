"""Errors about a user's slide: each message says what was wrong and what to do."""

from __future__ import annotations


class SlideError(Exception):
    """Base class: something is wrong with one slide. Batch jobs report it and go on."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SlideOpenError(SlideError):
    """No backend could open the file (missing, empty, corrupt, unsupported)."""


class SlideReadError(SlideError):
    """The file opened but its pixel data could not be read (corrupt tiles, truncated file)."""


class MissingMppError(SlideError):
    """The slide does not say how many µm one pixel covers; the user must pass ``--mpp``."""


class ImplausibleMppError(MissingMppError):
    """The slide's µm/px metadata is present but cannot be a microscope's (e.g. 352 µm/px)."""


class SlideTooSmallError(SlideError):
    """The slide is smaller than one patch at the requested resolution."""


class NoTissueError(SlideError):
    """Tissue detection found nothing; reported per slide, not fatal to a batch."""
