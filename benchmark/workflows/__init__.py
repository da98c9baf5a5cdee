"""Workflows: takes a user's model or entry; hands on the user journeys built from the stages below.

``evaluate`` is the in-memory Python API (``benchmark.evaluate``); ``submit`` adds a model entry to
a leaderboard, ``reproduce`` re-runs stored cells and compares them, ``regress`` exports a model's
baseline and compares a model with it; ``entries`` turns the workflows' model arguments into
models, ``rules`` states their tolerances.
"""
