"""Memorization toolkit: one shared library behind the thin top-level scripts."""
