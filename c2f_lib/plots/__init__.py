"""Figures of every stage. `show(fig)` embeds one in the notebook as a PNG, whatever the matplotlib backend."""
from __future__ import annotations


def show(fig, dpi: int = 100) -> None:
    """Display `fig` as a PNG and close it: the executed notebook keeps the picture even under Agg, and the
    inline backend does not draw it a second time at the end of the cell."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))
