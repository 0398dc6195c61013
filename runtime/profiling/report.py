"""One report writer for every command that reports: the result as JSON, a table for people, a PNG plot.

``eval`` (eval.json, eval.md, eval.png), ``calibrate`` (calibration.json, report.md, pareto.png), ``bench``
(results.json, results.md, results.png) and ``profile`` (profile.json, profile.txt, profile.png) all write
through :func:`write_report`. The JSON is ``json.dumps(data, indent=2)`` and a newline; the table is written
as given. The plot needs matplotlib (the ``plot`` extra), imported only here and only when a plot is asked
for; without it the JSON and the table are still written and :attr:`WrittenReport.png` is None.
Torch-free, so the runtime's profiler uses it as calibration does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

NO_PNG_NOTE = "no PNG: install matplotlib, the 'plot' extra"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: plots only go to files
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


PLOT_DPI = 100  # every report's PNG: legible at this resolution and small (tens of KB)


def save_figure(fig: Any, path: Path) -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG at :data:`PLOT_DPI`, then close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class WrittenReport:
    """The files one report wrote; ``png`` None: no plot (not asked for, or no matplotlib)."""

    json: Path
    table: Path
    png: Path | None = None
    plot_asked: bool = False

    @property
    def files(self) -> list[Path]:
        """The files written, in order: JSON, table, PNG (when there is one)."""
        return [self.json, self.table] + ([self.png] if self.png is not None else [])

    def summary(self, also: tuple[Path, ...] = ()) -> str:
        """``wrote A, B, C`` (``also`` first), with a note when a plot was asked for but matplotlib is missing."""
        note = f" ({NO_PNG_NOTE})" if self.plot_asked and self.png is None else ""
        return "wrote " + ", ".join(str(f) for f in (*also, *self.files)) + note


def write_report(out: str | Path, data: dict[str, Any], table: str, json_name: str, table_name: str,
                 png_name: str | None = None, plot: Callable[[dict[str, Any], Path], Any] | None = None
                 ) -> WrittenReport:
    """Write ``data`` to ``out/json_name``, ``table`` to ``out/table_name`` and, when ``plot`` is given and
    matplotlib is installed, ``plot(data, out/png_name)`` (which draws with :func:`pyplot` and returns
    something falsy where it drew nothing). ``out`` must
    exist. OSError propagates: each command says in its own words which ``--out`` to change."""
    out = Path(out)
    json_path, table_path = out / json_name, out / table_name
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    table_path.write_text(table, encoding="utf-8")
    png = out / png_name if plot is not None and png_name is not None and plot(data, out / png_name) else None
    return WrittenReport(json_path, table_path, png, plot_asked=plot is not None)
