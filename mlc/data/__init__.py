"""Datasets (VOC, COCO, CSV) as image paths plus an (N, C) int8 label matrix, and transforms."""

from .base import DatasetError, MultiLabelDataset, to_rgb
from .coco import COCODataset
from .csv_dataset import CSVDataset
from .factory import DATASET_KINDS, build_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from .voc import VOC_CLASSES, VOCDataset

__all__ = [
    "DATASET_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASSES",
    "COCODataset",
    "CSVDataset",
    "DatasetError",
    "MultiLabelDataset",
    "VOCDataset",
    "build_dataset",
    "build_transforms",
    "to_rgb",
]
