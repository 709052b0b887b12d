"""Reports built from predictions: the white-cell differential of a sample."""

from leukoscope.reports.differential import (
    CellCall,
    compute_differential,
    render_html,
    render_markdown,
)

__all__ = ["CellCall", "compute_differential", "render_html", "render_markdown"]
