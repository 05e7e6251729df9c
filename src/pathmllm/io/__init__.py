"""Readers and writers for formats other tools open (GeoJSON for QuPath, HDF5 for CLAM/TRIDENT)."""
