"""Iterative Refinement: pick a block, propose a rewrite, check, train, keep it if better
by the keep rule (``decide.KEEP_RULE``, its one statement)."""
