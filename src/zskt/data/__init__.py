"""Where images come from: the data set registry, readers of the canonical files, the downloader, and a
device-resident loader with batched augmentation plus the "M images per class" subsets (SPEC §4, §10)."""

from zskt.data.datasets import dataset_files_present, load_dataset
from zskt.data.download import download_dataset
from zskt.data.loader import DeviceLoader, normalize, select_per_class
from zskt.data.registry import DATASETS, DatasetInfo, ImageData, ImageSplit, data_root, get_info

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DeviceLoader",
    "ImageData",
    "ImageSplit",
    "data_root",
    "dataset_files_present",
    "download_dataset",
    "get_info",
    "load_dataset",
    "normalize",
    "select_per_class",
]
