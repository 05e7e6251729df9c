"""Benchmarks of embeddings: task classes, dataset loaders, metrics, reports."""
