"""Where images come from: the data set registry (one record per set, with its files, reader, download and
presets), `npz:`/`folder:` sets of your own, readers of the canonical files, the downloader, and a
device-resident loader with batched augmentation plus the "M images per class" subsets (SPEC §4, §10)."""

from zskt.data.datasets import check_files, dataset_files_present, load_dataset
from zskt.data.download import download_dataset
from zskt.data.loader import DeviceLoader, normalize, select_per_class
from zskt.data.registry import (
    DATASETS,
    DatasetInfo,
    ImageData,
    ImageSplit,
    data_root,
    dataset_name,
    get_info,
    nearest_builtin,
    preset,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DeviceLoader",
    "ImageData",
    "ImageSplit",
    "check_files",
    "data_root",
    "dataset_name",
    "dataset_files_present",
    "download_dataset",
    "get_info",
    "load_dataset",
    "nearest_builtin",
    "normalize",
    "preset",
    "select_per_class",
]
