"""Pieces every stage shares: atomic writes, hashing, the typed plan, normalisation, devices, names, errors."""
