"""Finding white cells in images: one centred cell (framing) or several in a field."""
