"""The pages a run folder holds: report.md and compare.md (markdown.py), its charts (charts.py), the
dataset and model cards (cards.py) and the UMAP map (map_page.py). Each page has exactly one writer here.

May import: nothing.
"""
