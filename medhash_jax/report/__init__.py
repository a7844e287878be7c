"""Reporting: results tables (Markdown + CSV), PR curves (matplotlib, Agg)
and retrieval galleries (PIL) as PNG. Grad-CAM overlays live in
:mod:`medhash_jax.cam`. numpy, PIL and matplotlib only: no jax import, so
reports can be re-rendered anywhere.
"""

from medhash_jax.report.curves import PlotArea, plot_area, plot_pr_curves
from medhash_jax.report.gallery import (GalleryLayout, render_gallery,
                                        save_gallery, spread_queries)
from medhash_jax.report.tables import (COLUMNS, format_csv, format_markdown,
                                       format_pivot, write_tables)

__all__ = ["COLUMNS", "GalleryLayout", "PlotArea", "format_csv",
           "format_markdown", "format_pivot", "plot_area", "plot_pr_curves",
           "render_gallery", "save_gallery", "spread_queries", "write_tables"]
