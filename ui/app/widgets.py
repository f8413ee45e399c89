"""Touch widgets: keypad, scattergram, histogram, cell gallery (painted with QPainter)."""

from __future__ import annotations

import math

import numpy as np
from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPixmap
from PyQt6.QtWidgets import QGridLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

#: a touch target: 9 mm on the 7-inch 800x480 display (5.2 px/mm) is 47 px; we use 52
TOUCH_PX = 52
CLASS_COLOURS = {"neutrophil": "#d95f02", "lymphocyte": "#1b9e77", "monocyte": "#7570b3",
                 "eosinophil": "#e7298a", "basophil": "#66a61e", None: "#999999"}


def touch_button(text: str, *, primary: bool = False, name: str | None = None) -> QPushButton:
    """A button at least :data:`TOUCH_PX` high and wide."""
    b = QPushButton(text)
    b.setMinimumSize(TOUCH_PX * 2, TOUCH_PX)
    if primary:
        b.setProperty("primary", True)
    if name:
        b.setObjectName(name)
    return b


class Keypad(QWidget):
    """Digits, delete and clear for the focused (or given) line edit."""

    entered = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.target: QLineEdit | None = None
        grid = QGridLayout(self)
        grid.setSpacing(6)
        keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "Clear", "0", "Del"]
        for i, k in enumerate(keys):
            b = QPushButton(k)
            b.setMinimumSize(TOUCH_PX + 8, TOUCH_PX)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.clicked.connect(lambda _=False, k=k: self._press(k))
            grid.addWidget(b, i // 3, i % 3)

    def _press(self, key: str) -> None:
        t = self.target
        if t is None:
            return
        if key == "Del":
            t.backspace()
        elif key == "Clear":
            t.clear()
        else:
            t.insert(key)


class Scattergram(QWidget):
    """Cells as points: volume (fL) against central phase (rad), coloured by class."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.cells: list[dict] = []
        self.setMinimumSize(200, 150)

    def set_cells(self, cells: list[dict]) -> None:
        self.cells = [c for c in cells if c.get("class") and c.get("volume_fl") is not None]
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802  (Qt)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = QRectF(self.rect()).adjusted(48, 10, -10, -36)
        p.fillRect(self.rect(), QColor("white"))
        p.setPen(QPen(QColor("#444"), 1))
        p.drawRect(r)
        f = QFont(self.font())
        f.setPointSizeF(max(7.0, f.pointSizeF() * 0.8))
        p.setFont(f)
        p.drawText(QRectF(r.left(), r.bottom() + 14, r.width(), 30),
                   Qt.AlignmentFlag.AlignHCenter, "cell volume (fL)")
        p.save()
        p.translate(12, r.center().y())
        p.rotate(-90)
        p.drawText(QRectF(-r.height() / 2, -10, r.height(), 20), Qt.AlignmentFlag.AlignHCenter,
                   "phase (rad)")
        p.restore()
        if not self.cells:
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "no cells")
            return
        vmax = max(800.0, max(c["volume_fl"] for c in self.cells) * 1.05)
        ph = [c.get("phase_rad", 0.0) for c in self.cells]
        plo, phi = min(min(ph), 0.0) - 0.1, max(max(ph), 1.0) + 0.1
        p.setPen(QColor("#444"))
        for frac in (0.0, 0.5, 1.0):  # axis ticks
            x = r.left() + r.width() * frac
            p.drawText(QRectF(x - 30, r.bottom() + 1, 60, 14), Qt.AlignmentFlag.AlignHCenter,
                       f"{vmax * frac:.0f}")
            y = r.bottom() - r.height() * frac
            p.drawText(QRectF(r.left() - 46, y - 7, 42, 14), Qt.AlignmentFlag.AlignRight,
                       f"{plo + (phi - plo) * frac:.1f}")
        for c in self.cells:
            x = r.left() + r.width() * min(c["volume_fl"] / vmax, 1.0)
            y = r.bottom() - r.height() * (c.get("phase_rad", 0.0) - plo) / (phi - plo)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(CLASS_COLOURS.get(c["class"], "#999")))
            p.drawEllipse(QPointF(x, y), 2.5, 2.5)
        y = r.top() + 4
        for k, col in CLASS_COLOURS.items():
            if k is None:
                continue
            p.setBrush(QColor(col))
            p.drawEllipse(QPointF(r.right() - 90, y + 6), 4, 4)
            p.setPen(QColor("#222"))
            p.drawText(QPointF(r.right() - 82, y + 10), k[:4])
            p.setPen(Qt.PenStyle.NoPen)
            y += 14
        p.end()


class Histogram(QWidget):
    """Monocyte volume histogram with the SD marked."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.volumes: list[float] = []
        self.setMinimumSize(200, 150)

    def set_volumes(self, volumes: list[float]) -> None:
        self.volumes = [v for v in volumes if v is not None and math.isfinite(v)]
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802  (Qt)
        p = QPainter(self)
        r = QRectF(self.rect()).adjusted(40, 10, -10, -36)
        p.fillRect(self.rect(), QColor("white"))
        p.setPen(QPen(QColor("#444"), 1))
        p.drawRect(r)
        p.drawText(QRectF(r.left(), r.bottom() + 4, r.width(), 30), Qt.AlignmentFlag.AlignHCenter,
                   "monocyte volume (fL)")
        if len(self.volumes) < 2:
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "too few monocytes")
            return
        counts, edges = np.histogram(self.volumes, bins=20, range=(0, max(1000, max(self.volumes))))
        top = max(counts.max(), 1)
        w = r.width() / len(counts)
        p.setBrush(QColor(CLASS_COLOURS["monocyte"]))
        p.setPen(Qt.PenStyle.NoPen)
        for i, c in enumerate(counts):
            h = r.height() * c / top
            p.drawRect(QRectF(r.left() + i * w + 1, r.bottom() - h, w - 2, h))
        m, sd = float(np.mean(self.volumes)), float(np.std(self.volumes, ddof=1))
        span = edges[-1] - edges[0]
        p.setPen(QPen(QColor("#c00"), 2, Qt.PenStyle.DashLine))
        for v in (m - sd, m + sd):
            x = r.left() + r.width() * (v - edges[0]) / span
            p.drawLine(QPointF(x, r.top()), QPointF(x, r.bottom()))
        p.end()


class Gallery(QWidget):
    """Reconstructed cell images (amplitude), a row per class."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.lay = QVBoxLayout(self)

    def set_images(self, images: np.ndarray, classes: list[str], size: int = 56) -> None:
        while self.lay.count():
            w = self.lay.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        for cls in CLASS_COLOURS:
            if cls is None:
                continue
            idx = [i for i, c in enumerate(classes) if c == cls]
            row = QWidget()
            g = QGridLayout(row)
            g.setContentsMargins(0, 0, 0, 0)
            name = QLabel(f"{cls} ({len(idx)})")
            name.setMinimumWidth(110)
            g.addWidget(name, 0, 0)
            for j, i in enumerate(idx[:10]):
                a = np.asarray(images[i], np.float32)
                a = np.clip((a - a.min()) / max(float(np.ptp(a)), 1e-6) * 255, 0, 255).astype(np.uint8)
                a = np.ascontiguousarray(a)
                img = QImage(a.data, a.shape[1], a.shape[0], a.shape[1],
                             QImage.Format.Format_Grayscale8).copy()
                lab = QLabel()
                lab.setPixmap(QPixmap.fromImage(img).scaled(size, size))
                g.addWidget(lab, 0, j + 1)
            g.setColumnStretch(12, 1)
            self.lay.addWidget(row)
        self.lay.addStretch(1)
