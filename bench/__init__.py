"""Bench: the load generator and benchmark suite (``python -m bench``), its reports and plots.

Speed goals live here and are printed as figures; tests assert behaviour, not timings. Traffic
goes to loopback only.

Placeholder: this package is built in a later issue.
"""
