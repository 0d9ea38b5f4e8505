"""Data side of InstructKGC: IE data <-> instruction records, answer parsing and scoring.

Pure Python: this package never imports torch.
"""
