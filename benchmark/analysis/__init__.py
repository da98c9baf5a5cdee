"""Analysis: takes the stored results; hands on tables, intervals and ID-vs-OOD trend fits.

``aggregate`` turns result files into a per-model table, ``stats`` holds the interval arithmetic,
``trends`` fits OOD robustness against ID robustness.
"""
