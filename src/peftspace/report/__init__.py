"""Reports of searches and comparisons: figures (``plots``) written with matplotlib's Agg renderer."""
