"""Data layer: decoding, dataset scans and audits, leakage-free splits, loaders, download."""
