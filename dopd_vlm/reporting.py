"""After a run: PNG plots over steps and an HTML page of sampled responses coloured by regime.

Inputs are the run's own files: ``metrics.jsonl`` (one JSON object per optimiser step, flat keys
such as ``regime/HT/frac``, ``regime/HT/loss``, ``gap/mean``, ``student/entropy``) and
``samples.jsonl`` (``{"step", "prompt", "tokens": [str], "regimes": [str], "answer"}``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

# One colour per regime name (docs/method.md §4 regimes first; anything else cycles the tail).
REGIME_COLOURS = {
    "LH": "#9ecae1", "LL": "#fdd0a2", "HT": "#fc9272", "HS": "#a1d99b", "ALL": "#dadaeb",
}
_EXTRA = ["#bcbddc", "#fdae6b", "#c7e9c0", "#d9d9d9"]
# Legend names of the DOPD regimes (docs/method.md §4), in the paper's order.
REGIME_NAMES = {"LH": "LH light teacher", "LL": "LL weak self", "HT": "HT deep teacher", "HS": "HS light self",
                "ALL": "all tokens"}


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if key in r and r[key] is not None:
            xs.append(r["step"])
            ys.append(float(r[key]))
    return xs, ys


def run_identity(run_dir: str | Path) -> tuple[str, str]:
    """``(run name, routing table)`` of a run folder: its folder name and ``config.yaml``'s ``table``
    ("" when the folder has no config, e.g. plain metrics files)."""
    run_dir = Path(run_dir)
    table = ""
    config = run_dir / "config.yaml"
    if config.is_file():
        from dopd_vlm.config import load_yaml

        try:
            data = load_yaml(config.read_text(encoding="utf-8")) or {}
        except Exception:  # a plot title is not worth failing a finished run over
            data = {}
        if isinstance(data, dict):
            table = str(data.get("table") or "")
            if not table and isinstance(data.get("data"), dict):  # an sft run: say which view it trained
                table = f"sft, {data['data'].get('view', 'plain')} view"
    return run_dir.resolve().name, table


def plot_metrics(metrics_path: str | Path, out_dir: str | Path, run_name: str | None = None,
                 table: str | None = None) -> list[Path]:
    """Write regime fractions, per-regime loss, mean gap A (+ threshold) and entropy as PNGs.

    Readable at a glance: every title names the run and its routing table (by default the folder of
    ``metrics_path`` and its ``config.yaml``), and the step axis has integer ticks only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found_name, found_table = run_identity(Path(metrics_path).parent)
    run_name = found_name if run_name is None else run_name
    table = found_table if table is None else table
    suffix = " — " + " · ".join(p for p in (run_name, table and f"table {table}") if p) if (run_name or table) else ""

    rows = read_jsonl(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not rows:
        return []
    keys = sorted({k for r in rows for k in r})
    found = {k.split("/")[1] for k in keys if k.startswith("regime/") and k.endswith("/frac")}
    regimes = [g for g in REGIME_NAMES if g in found] + sorted(found - set(REGIME_NAMES))
    panels = [
        ("regime_fractions.png", "token fraction per regime", [f"regime/{g}/frac" for g in regimes]),
        ("regime_losses.png", "mean loss per regime", [f"regime/{g}/loss" for g in regimes]),
        ("gap.png", "privilege advantage gap A", [k for k in ("gap/mean", "threshold/A") if k in keys]),
        ("entropy.png", "student entropy (nats)", [k for k in ("student/entropy",) if k in keys]),
        ("loss.png", "loss", [k for k in ("loss",) if k in keys]),
    ]
    written = []
    for fname, title, series_keys in panels:
        fig = metric_figure(rows, title + suffix, series_keys)
        if fig is None:
            continue
        fig.savefig(out_dir / fname, metadata={"Title": title + suffix})
        plt.close(fig)
        written.append(out_dir / fname)
    return written


def metric_figure(rows: list[dict], title: str, series_keys: list[str]):
    """One panel: the ``series_keys`` of ``rows`` over the optimiser step (None when all are empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = [(k, *_series(rows, k)) for k in series_keys]
    series = [s for s in series if s[1]]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for k, xs, ys in series:
        regime = k.split("/")[1] if k.startswith("regime/") else None
        label = REGIME_NAMES.get(regime, regime) if regime else k
        ax.plot(xs, ys, marker="o", ms=3, label=label, color=REGIME_COLOURS.get(regime) if regime else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimiser step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers: no 1.5 ticks
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _colour(regime: str, palette: dict[str, str]) -> str:
    if regime not in palette:
        palette[regime] = REGIME_COLOURS.get(regime, _EXTRA[len(palette) % len(_EXTRA)])
    return palette[regime]


def write_token_html(samples_path: str | Path, out_path: str | Path, title: str = "token routing",
                     max_samples: int = 200) -> Path:
    """An HTML page: each sampled response with every token coloured by its regime."""
    samples = read_jsonl(samples_path)[-max_samples:]
    palette: dict[str, str] = {}
    blocks = []
    for s in samples:
        spans = []
        for tok, reg in zip(s["tokens"], s["regimes"]):
            c = _colour(reg, palette) if reg else "#ffffff"
            spans.append(f'<span class="t" style="background:{c}" title="{html.escape(reg or "pad")}">'
                         f"{html.escape(tok)}</span>")
        blocks.append(
            f'<div class="s"><div class="m">step {s.get("step")} · answer: '
            f'{html.escape(str(s.get("answer")))}</div>'
            f'<div class="p">{html.escape(s.get("prompt", ""))}</div>'
            + (f'<div class="p">teacher also saw: {html.escape(s["privileged"])}</div>' if s.get("privileged") else "")
            + f'<div class="r">{"".join(spans)}</div></div>'
        )
    legend = "".join(f'<span class="t" style="background:{c}">{html.escape(r)}</span> ' for r, c in palette.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}} .s{{border-bottom:1px solid #ddd;padding:.6em 0}}
.m{{color:#666;font-size:.85em}} .p{{color:#444;white-space:pre-wrap;font-size:.85em;margin:.3em 0}}
.r{{font-family:monospace;white-space:pre-wrap}} .t{{border-radius:2px;padding:0 1px}}</style></head>
<body><h1>{html.escape(title)}</h1><p>Each response token is coloured by the regime that routed it
(DOPD docs/method.md §4: LH light teacher, LL weak self, HT deep teacher, HS light self). Legend: {legend}</p>
{"".join(blocks) or "<p>no samples were written</p>"}</body></html>"""
    out_path = Path(out_path)
    out_path.write_text(page, encoding="utf-8")
    return out_path
