"""Iterative Refinement: select a block, propose a rewrite, check it, train it, keep it if better."""
