"""Tracking: every method maps a source point to a predicted target point through one interface."""
