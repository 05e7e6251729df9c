"""Record formats (JSONL manifests) and datasets."""
