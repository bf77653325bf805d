"""The training engine: data, model, optimizer, lr plan, step, loop, run directory, workers."""
