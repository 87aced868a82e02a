"""The CLI root: the one place that imports every package (engine, worker, training) and that
no package imports."""
