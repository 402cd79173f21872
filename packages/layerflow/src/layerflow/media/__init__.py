"""Reading and writing what users open in editors: PNG sequences, WebM with alpha, MP4, previews."""

from .frames import read_png_sequence, write_png_sequence
from .output import OutputLayer, read_manifest, write_output_dir
from .preview import contact_sheet, over_checkerboard, write_contact_sheet, write_preview_gif
from .video import read_video, write_mp4, write_webm_rgba

__all__ = [
    "OutputLayer",
    "contact_sheet",
    "over_checkerboard",
    "read_manifest",
    "read_png_sequence",
    "read_video",
    "write_contact_sheet",
    "write_mp4",
    "write_output_dir",
    "write_png_sequence",
    "write_preview_gif",
    "write_webm_rgba",
]
