"""The package's file formats: PNG frame folders, images, WebM with alpha, MP4, previews, output folders.

Every part of LayerFlow reads and writes these through here: the pipeline and the CLI, the training
datasets (:mod:`layerflow.data`) and the evaluation (:mod:`layerflow.metrics`).
"""

from .frames import (
    IMAGE_SUFFIXES,
    FrameError,
    FrameMode,
    find_file,
    frames_to_tensor,
    list_frame_files,
    read_image,
    read_images,
    read_png_sequence,
    write_png_sequence,
)
from .output import MANIFEST_NAME, OutputLayer, read_manifest, write_output_dir
from .preview import contact_sheet, over_checkerboard, write_contact_sheet, write_preview_gif
from .video import VIDEO_SUFFIXES, decode_video, read_video, video_fps, write_mp4, write_webm_rgba

__all__ = [
    "MANIFEST_NAME",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FrameError",
    "FrameMode",
    "OutputLayer",
    "contact_sheet",
    "decode_video",
    "find_file",
    "frames_to_tensor",
    "list_frame_files",
    "over_checkerboard",
    "read_image",
    "read_images",
    "read_manifest",
    "read_png_sequence",
    "read_video",
    "video_fps",
    "write_contact_sheet",
    "write_mp4",
    "write_output_dir",
    "write_png_sequence",
    "write_preview_gif",
    "write_webm_rgba",
]
