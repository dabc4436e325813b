"""The features app (faust): windowed statistics to Redis, the label join, live accuracy, drift."""
