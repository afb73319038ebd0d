"""Iterative Refinement: pick a block, propose a rewrite, check, train, keep it if better."""
