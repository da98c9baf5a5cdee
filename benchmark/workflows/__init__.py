"""Workflows: takes a user's model or entry; hands on the user journeys built from the stages below.

``evaluate`` is the in-memory Python API (``benchmark.evaluate``).
"""
