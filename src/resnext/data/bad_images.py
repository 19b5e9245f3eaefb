"""The bad-image rule: a file that is unreadable, not an image, smaller than the training crop
needs or over the pixel limit is skipped with one warning naming it and counted, or fatal with
bad_images="error": the same rule for every reader, whether the image is decoded now or by a
DataLoader worker later. Readers report to the split's `BadImages`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from PIL import Image

from resnext.data.images import MAX_PIXELS, over_pixel_limit

log = logging.getLogger(__name__)

# What decoding raises for a missing, zero-byte, truncated or non-image file.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
FIRST_NAMED = 3  # bad samples a message names


class BadImageError(ValueError):
    """A bad image file while bad_images="error"."""


class NoSamples(ValueError):
    """A split holds no readable, labelled image (e.g. ImageNet's unlabelled test split)."""


@dataclass
class BadImages:
    """The bad-image policy of one split and the bad files met so far (`files`).

    `on_bad` is "skip" or "error"; an image whose shorter side is below `min_size` is bad (the
    training crop cannot be cut from it), and so is one of more than `max_pixels` pixels.
    `met` counts the bad samples met since `recount` (an epoch's, for training's limit), a file
    met again counted again; `files` holds each once.
    """

    on_bad: str = "skip"
    min_size: int = 1
    max_pixels: int = MAX_PIXELS
    files: set[str] = field(default_factory=set)
    met: int = 0
    first: list[str] = field(default_factory=list)  # the first few met, named

    def recount(self) -> None:
        """Count the bad samples met from here on (an epoch's: training's max_bad_fraction)."""
        self.met, self.first = 0, []

    def note(self, name: str, reason: str) -> None:
        """Skip a bad file with one warning, or raise if `on_bad` is "error"."""
        if self.on_bad == "error":
            raise BadImageError(f"bad image {name}: {reason} (bad_images=skip skips such files)")
        self._count([name])
        if name not in self.files:
            self.files.add(name)
            log.warning("skipping bad image %s: %s", name, reason)

    def note_many(self, names: list[str], reason: str, summary: str) -> None:
        """Bad samples of one kind (a whole unlabelled file): counted one by one, warned about
        once with `summary` (`reason` is the first one's, for a single one or an error)."""
        if self.on_bad == "error" or len(names) == 1:
            self.note(names[0], reason)
            return
        self._count(names)
        self.files.update(names)
        log.warning("skipping %s", summary)

    def _count(self, names: list[str]) -> None:
        self.met += len(names)
        self.first += names[: FIRST_NAMED - len(self.first)]

    def named(self) -> str:
        """The first few bad samples met since `recount`, for a message."""
        more = ", ..." if self.met > len(self.first) else ""
        return ", ".join(self.first) + more

    def size_problem(self, size: tuple[int, int]) -> str | None:
        """Why an image of `size` (width, height) is bad, or None."""
        return over_pixel_limit(size, self.max_pixels) or too_small(size, self.min_size)


def too_small(size: tuple[int, int], min_size: int) -> str | None:
    """Why an image of `size` (width, height) is bad for a crop of `min_size`, or None."""
    if min(size) >= min_size:
        return None
    return f"{size[0]}x{size[1]} px, smaller than the {min_size} px the training crop needs"
