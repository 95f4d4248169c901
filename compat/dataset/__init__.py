"""The documented dataset classes, built on datamint-pipes. Change ``datamint.dataset`` to
``datamint_compat.dataset`` in existing code; nothing else."""

from .annotation import Annotation
from .annotation_processor import AnnotationProcessor
from .base import DatamintBaseDataset, DatamintDatasetException, DatamintException
from .image_dataset import ImageDataset
from .multiframe_dataset import MultiFrameDataset
from .sliced_dataset import SlicedVolumeDataset
from .sliced_video_dataset import SlicedVideoDataset
from .video_dataset import VideoDataset
from .volume_dataset import VolumeDataset

__all__ = [
    "Annotation",
    "AnnotationProcessor",
    "DatamintBaseDataset",
    "DatamintDatasetException",
    "DatamintException",
    "ImageDataset",
    "MultiFrameDataset",
    "SlicedVideoDataset",
    "SlicedVolumeDataset",
    "VideoDataset",
    "VolumeDataset",
]
