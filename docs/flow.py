#!/usr/bin/env python3
"""Draws docs/src/images/flow.svg, the picture of the flow on the front page: each step from
power-on to a node with its add-ons, what carries it, and the node's state after it.
`python3 docs/flow.py` rewrites the file; a test (integration-tests/tests/docs.rs) fails when
the file is not what this script draws."""

import sys
from pathlib import Path
from xml.sax.saxutils import escape

# (step, what carries it, the node's state after it)
STEPS = [
    ("power on", "the operator", "registered"),
    ("DHCP", "full or proxyDHCP", "registered"),
    ("iPXE", "TFTP, then a per-MAC script", "installing"),
    ("install", "Flatcar PXE + install Ignition", "installed"),
    ("first boot", "final Ignition, callback", "booted"),
    ("DNS", "the node in the zone", "booted"),
    ("join", "kubeadm over pinned SSH", "ready"),
    ("add-ons", "server-side apply", "ready"),
]

PER_ROW = 4
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 200, 84, 44, 70, 20


def box_xy(i):
    row, col = divmod(i, PER_ROW)
    if row % 2:  # the second row runs right to left, under the end of the first
        col = PER_ROW - 1 - col
    return MARGIN + col * (BOX_W + GAP_X), MARGIN + row * (BOX_H + GAP_Y)


def draw():
    rows = (len(STEPS) + PER_ROW - 1) // PER_ROW
    width = 2 * MARGIN + PER_ROW * BOX_W + (PER_ROW - 1) * GAP_X
    height = 2 * MARGIN + rows * BOX_H + (rows - 1) * GAP_Y
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        "<title>lacave: from power-on to a Kubernetes node</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#445"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for i, (step, how, state) in enumerate(STEPS):
        x, y = box_xy(i)
        fill = "#e8f0fe" if i < 5 else "#e6f4ea"
        out.append(
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="10" '
            f'fill="{fill}" stroke="#445" stroke-width="1.5"/>'
        )
        cx = x + BOX_W // 2
        out.append(
            f'<text x="{cx}" y="{y + 28}" text-anchor="middle" font-size="18" '
            f'font-weight="bold" fill="#223">{escape(step)}</text>'
        )
        out.append(
            f'<text x="{cx}" y="{y + 50}" text-anchor="middle" font-size="12" '
            f'fill="#334">{escape(how)}</text>'
        )
        out.append(
            f'<text x="{cx}" y="{y + 72}" text-anchor="middle" font-size="12" '
            f'font-style="italic" fill="#556">→ {escape(state)}</text>'
        )
        if i + 1 < len(STEPS):
            nx, ny = box_xy(i + 1)
            if ny == y and nx > x:
                line = (x + BOX_W, y + BOX_H // 2, nx, ny + BOX_H // 2)
            elif ny == y:
                line = (x, y + BOX_H // 2, nx + BOX_W, ny + BOX_H // 2)
            else:
                line = (cx, y + BOX_H, nx + BOX_W // 2, ny)
            x1, y1, x2, y2 = line
            out.append(
                f'<line x1="{x1}" y1="{y1}" x2="{x2 - (4 if x2 > x1 else -4 if x2 < x1 else 0)}" '
                f'y2="{y2 - (4 if y2 > y1 else 0)}" stroke="#445" stroke-width="2" '
                f'marker-end="url(#arrow)"/>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "src" / "images" / "flow.svg"
    if len(sys.argv) > 1 and sys.argv[1] == "--stdout":
        sys.stdout.write(draw())
    else:
        target.write_text(draw())
        print(target)
