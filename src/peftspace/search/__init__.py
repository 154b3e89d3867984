"""Progressive design-space search (Chen et al. 2023): the trial store and distribution statistics."""
