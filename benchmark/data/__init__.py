"""Data: takes dataset and shift entries; hands on image tensors in [0, 1] with ID-space labels.

In-distribution data (``datasets``), real on-disk formats (``loaders``), dataset shifts and the
digits corruptions (``shifts``, ``corruptions``), published-archive checksums (``archives``) and the
picture of a suite's shifts (``picture``).
"""
