"""Gradient attributions through captum (work in progress: registers nothing yet)."""
