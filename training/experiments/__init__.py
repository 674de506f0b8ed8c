"""Experiments that show why attention exists: `python -m training.experiments --help`."""
