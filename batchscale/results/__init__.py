"""Results: run directories read back into tables, figures and limits."""
