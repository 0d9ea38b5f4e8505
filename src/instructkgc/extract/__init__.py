"""``instructkgc extract``: text + schema in, knowledge graph out (windowing, grounding, merging, export)."""
