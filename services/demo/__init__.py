"""The drift-recovery demo: the whole loop on a stack, every service its own process."""
