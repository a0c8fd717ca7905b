"""Render resources/icon.svg into icon.png (512 px) and icon.icns (16-1024 px).

    python resources/make_icon.py            # both files, next to icon.svg

On macOS the .icns is made by `iconutil` from an .iconset folder; elsewhere this
script writes the same PNG-based .icns itself (the format is a header plus
tagged PNG images), so the committed icon can be refreshed from Linux too.
Rendering uses QtSvg from PySide6-Essentials (offscreen: no display needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PNG_SIZE = 512

# .iconset file name -> pixel size (what iconutil expects)
ICONSET = {
    "icon_16x16.png": 16, "icon_16x16@2x.png": 32,
    "icon_32x32.png": 32, "icon_32x32@2x.png": 64,
    "icon_128x128.png": 128, "icon_128x128@2x.png": 256,
    "icon_256x256.png": 256, "icon_256x256@2x.png": 512,
    "icon_512x512.png": 512, "icon_512x512@2x.png": 1024,
}

# .icns element type -> pixel size of its PNG (types that hold PNG data, macOS 10.8+)
ICNS_TYPES = {
    b"icp4": 16, b"ic11": 32, b"icp5": 32, b"ic12": 64, b"ic07": 128,
    b"ic13": 256, b"ic08": 256, b"ic14": 512, b"ic09": 512, b"ic10": 1024,
}


def render_png(svg: Path, size: int) -> bytes:
    """The SVG drawn on a transparent size x size canvas, as PNG bytes."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])  # noqa: F841  (QPainter needs one)
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG for QtSvg")
    image = QImage(size, size, QImage.Format_ARGB32_Premultiplied)
    image.fill(0)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setRenderHint(QPainter.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data)


def icns_bytes(pngs: dict[int, bytes]) -> bytes:
    """An .icns file holding the PNG for every type in ICNS_TYPES (pngs: size -> PNG bytes)."""
    body = b"".join(kind + struct.pack(">I", 8 + len(pngs[size])) + pngs[size] for kind, size in ICNS_TYPES.items())
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def make_icns(svg: Path, out: Path) -> None:
    sizes = sorted(set(ICONSET.values()) | set(ICNS_TYPES.values()))
    pngs = {size: render_png(svg, size) for size in sizes}
    iconutil = shutil.which("iconutil") if sys.platform == "darwin" else None
    if iconutil is None:
        out.write_bytes(icns_bytes(pngs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        iconset = Path(tmp) / "icon.iconset"
        iconset.mkdir()
        for name, size in ICONSET.items():
            (iconset / name).write_bytes(pngs[size])
        subprocess.run([iconutil, "-c", "icns", str(iconset), "-o", str(out)], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svg", type=Path, default=HERE / "icon.svg")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "icon.png").write_bytes(render_png(args.svg, PNG_SIZE))
    make_icns(args.svg, args.out_dir / "icon.icns")
    print(f"wrote {args.out_dir / 'icon.png'} and {args.out_dir / 'icon.icns'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
