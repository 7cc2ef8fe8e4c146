"""Small PNG thumbnails of test images for the report's worst-examples section.

Made when the report is written, from the files ``metrics.json`` names (``test_top_losses``),
through the data package's safe image decoder; a file that is gone or unreadable (a report
rebuilt after the data moved) gets no thumbnail, and the report shows its name alone.
"""

from __future__ import annotations

import io
from pathlib import Path

#: Longest side of a thumbnail, in pixels. Colour ones are reduced to ``COLOURS`` colours: a photo's
#: thumbnail is then ~4 kB (8 kB in full colour), so a dozen add ~60 kB to the page.
SIDE = 80
COLOURS = 128


def thumbnail(path: str, side: int = SIDE) -> bytes | None:
    """``path`` shrunk to at most ``side`` pixels a side (never enlarged), as PNG bytes (grey when the
    image is, else a ``COLOURS``-colour palette); None when the file cannot be read."""
    from PIL import Image, ImageChops

    from transferkit.data.image import open_image
    from transferkit.errors import TransferKitError

    if not Path(path).is_file():  # gone, or not a regular file (a device, a pipe): nothing to read
        return None
    try:
        image = open_image(path, max_side=side)
        image.thumbnail((side, side), Image.BILINEAR)
        red, green, blue = image.split()
        grey = all(ImageChops.difference(red, other).getbbox() is None for other in (green, blue))
        image = image.convert("L") if grey else image.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    except (TransferKitError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return buffer.getvalue()
