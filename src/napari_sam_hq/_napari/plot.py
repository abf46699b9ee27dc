"""A small live plot of training curves (loss, held-out IoU), painted with Qt alone: no
plotting library for two polylines. Each curve is scaled to its own range; the legend
names each with its last value."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class CurvePlot(QWidget):
    """Curves by name: ``add(name, value)`` appends a point and repaints; ``values[name]``
    holds them (tests read it)."""

    def __init__(self, *curves: tuple[str, str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.colors = dict(curves)
        self.values: dict[str, list[float]] = {name: [] for name in self.colors}
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def add(self, name: str, value: float) -> None:
        self.values[name].append(float(value))
        self.update()

    def clear(self) -> None:
        for v in self.values.values():
            v.clear()
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        top, bottom, left, right = 16, h - 6, 6, w - 6
        legend_x = left
        for name, color in self.colors.items():
            vals = [v for v in self.values[name] if v == v]  # NaN (no held-out objects) left out
            p.setPen(QPen(QColor(color)))
            last = f" {vals[-1]:.3f}" if vals else ""
            p.drawText(legend_x, 12, f"{name}{last}")
            legend_x += p.fontMetrics().horizontalAdvance(f"{name}{last}") + 14
            if len(vals) < 2:
                continue
            lo, hi = min(vals), max(vals)
            span = hi - lo or 1.0
            pts = [QPointF(left + (right - left) * i / (len(vals) - 1), bottom - (bottom - top) * (v - lo) / span)
                   for i, v in enumerate(vals)]
            pen = QPen(QColor(color))
            pen.setWidthF(1.5)
            pen.setCapStyle(Qt.PenCapStyle.RoundCap)
            p.setPen(pen)
            p.drawPolyline(QPolygonF(pts))
        p.end()
