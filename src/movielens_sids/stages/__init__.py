"""The pipeline's stages: each a function ``fn(run_dir, cfg) -> dict`` that reads artifacts, calls pure
code and writes artifacts (catalog, embed, train, assign, evaluate, export, visualize).

A stage reads what earlier stages wrote only through ``movielens_sids.artifacts`` and never imports
another stage. ``movielens_sids.pipeline`` lists them in order; ``movielens_sids.cli`` maps commands
to them.

May import: nothing (each stage module is imported by name).
"""
