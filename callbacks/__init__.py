"""Lightning callbacks (installed as `lit_mae.callbacks`): reconstruction grids and monitors."""

__all__: list[str] = []
