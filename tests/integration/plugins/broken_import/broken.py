"""A test plugin that cannot be imported."""

raise RuntimeError("broken-import refuses to load: missing dependency xyz")
