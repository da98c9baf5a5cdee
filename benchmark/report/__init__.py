"""Report: takes the analysed tables and fits; hands on what people read (``leaderboard.md``, plots).

Generated only from ``results/``; regenerating from unchanged results is byte-identical.
"""
