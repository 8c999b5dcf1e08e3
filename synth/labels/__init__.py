"""Labels: the expression prior (AU vectors like real faces make)."""
