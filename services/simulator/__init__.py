"""Synthetic insulator fleets: sensor windows, labels and drift scenarios."""
