"""Experiment scripts reproducing the EGNN paper results (N-body, three-body, ...)."""
