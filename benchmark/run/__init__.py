"""Run: takes a suite, its models and shifts; hands on one result JSON per evaluation cell.

``plan`` expands a suite into content-hashed cells, ``evaluate`` attacks them and ``store`` writes
them atomically; ``trust`` checks each cell's attack; ``calibrate`` compares attacks with AutoAttack.
"""
