"""Studies: presets (YAML) expanded into runs, and the sweep that trains them."""
