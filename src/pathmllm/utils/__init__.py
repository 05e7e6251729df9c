"""Small shared utilities: registry, optional imports, atomic writes."""
