"""PMEB datasets: a registry of loaders for each public download's native layout, and a
generic CSV/JSONL manifest (``manifest:<path>``) for anything else."""

from pathmllm.bench.datasets.base import (
    DATASETS,
    CaptionSet,
    ClassificationSet,
    Data,
    DatasetInfo,
    DatasetLayoutError,
    DatasetNotFoundError,
    GroupsRequiredError,
    H5Image,
    ImageRef,
    ParquetImage,
    SplitNotAvailableError,
    VQASet,
    ZipImage,
    dataset_info,
    find_dataset_root,
    load_builtin_datasets,
    read_images,
    register_dataset,
    split_train_test,
    subsample,
)

__all__ = [
    "DATASETS", "CaptionSet", "ClassificationSet", "Data", "DatasetInfo", "DatasetLayoutError",
    "DatasetNotFoundError", "GroupsRequiredError", "H5Image", "ImageRef", "ParquetImage", "SplitNotAvailableError",
    "VQASet", "ZipImage", "dataset_info", "find_dataset_root",
    "load_builtin_datasets", "read_images", "register_dataset", "split_train_test", "subsample",
]
