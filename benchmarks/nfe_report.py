"""One markdown table of FID against NFE from the JSON records of several ``benchmarks.nfe_table`` runs.

    python -m benchmarks.nfe_report --records teacher=teacher.json student=student.json \\
      --reference "dale_langevin:n_steps=1000,denoise_steps=10" > table.md

``--pivot 1,2,4,10,25,1010`` adds a line per sampler with a column per NFE above the full table.
Each record file is one model's (or one student's) draws; ``name=`` prefixes its rows' sampler names.
Rows are sorted by NFE, then by mean FID. The reference row (an entry of ``--reference``, the
``nfe_table`` entry syntax) sets the ``vs ref`` column: mean FID over the reference's mean FID,
minus one. The tables of ``docs/fast_samplers.md`` are this script's output over the files of
``docs/fast_samplers_records/``.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from benchmarks.nfe_table import parse_entries


def describe_settings(settings: dict) -> str:
    """Short text of a sampler's settings: ``{"n_steps": 4, "denoise_steps": 6, "eta": 1.0}`` -> ``"4 + 6, eta 1.0"``."""
    s = dict(settings)
    parts = []
    if "n_steps" in s and "denoise_steps" in s:
        parts.append(f"{s.pop('n_steps')} + {s.pop('denoise_steps')}")
    parts += [f"{k} {v}" for k, v in s.items()]
    return ", ".join(parts)


def _finite_mean(values) -> float:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    return float(v.mean()) if len(v) else float("nan")


def summarise_row(row: dict) -> dict:
    """Mean and spread of one ``nfe_table`` row's draws: ``fid`` and ``fid_sd`` (ddof 1; NaN for one draw),
    the per-seed FIDs, and the means of class entropy, nn ratio and diverged share, the median seconds.

    A draw whose FID is NaN (no finite sample) is left out of the FID mean and counted in ``failed``.
    """
    draws = row["draws"]
    fids = np.array([d["fid"] for d in draws], float)
    ok = np.isfinite(fids)
    return {
        "fid": float(fids[ok].mean()) if ok.any() else float("nan"),
        "fid_sd": float(fids[ok].std(ddof=1)) if ok.sum() > 1 else float("nan"),
        "fids": [float(f) for f in fids],
        "failed": int((~ok).sum()),
        "class_entropy": _finite_mean(d["class_entropy"] for d in draws),
        "nn_ratio": _finite_mean(d["nn_ratio"] for d in draws),
        "diverged": _finite_mean(d.get("diverged", 0.0) for d in draws),
        "seconds": float(np.median([d["seconds"] for d in draws])),
    }


def _label(name: str, row: dict) -> str:
    return f"{name}: {row['method']}" if name else row["method"]


def _fid_text(s: dict) -> str:
    """``"mean ± sd"`` of a :func:`summarise_row` summary (the mean alone for a single finite draw)."""
    return f"{s['fid']:.1f}" + ("" if math.isnan(s["fid_sd"]) else f" ± {s['fid_sd']:.1f}")


def _unique_rows(records: list[tuple[str, dict]]):
    """``(name, row, summary)`` of every row, a row drawn again with the same FIDs (draws are deterministic) once."""
    seen = set()
    for name, rec in records:
        for row in rec["rows"]:
            s = summarise_row(row)
            key = (name, row["method"], json.dumps(row["settings"], sort_keys=True), tuple(s["fids"]))
            if key not in seen:
                seen.add(key)
                yield name, row, s


def find_reference(records: list[tuple[str, dict]], method: str, settings: dict) -> dict:
    """The row of ``records`` (``(name, nfe_table JSON)`` pairs) drawn with ``method`` and ``settings``;
    ``ValueError`` naming what was looked for if no row or several (other than the same draws twice) match."""
    found = [r for _, r, _ in _unique_rows(records) if r["method"] == method and r["settings"] == settings]
    if len(found) != 1:
        raise ValueError(f"reference {method} {settings}: {len(found)} matching rows in the records (need exactly 1)")
    return found[0]


def markdown_table(records: list[tuple[str, dict]], reference: dict | None = None) -> str:
    """The markdown table of every row of ``records`` (``(name, nfe_table JSON)`` pairs), sorted by NFE then FID.

    ``reference`` is one of those rows; each row's ``vs ref`` is its mean FID over the reference's, minus one.
    A row drawn again in another file with the same FIDs (draws are deterministic) is shown once.
    """
    ref_fid = summarise_row(reference)["fid"] if reference is not None else float("nan")
    lines = [
        "| sampler | settings | NFE | FID: mean ± sd (seeds) | vs ref | class entropy | nn ratio | diverged | s per draw |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    items = [(row["nfe"], s, name, row) for name, row, s in _unique_rows(records)]
    items.sort(key=lambda it: (it[0], math.inf if math.isnan(it[1]["fid"]) else it[1]["fid"]))
    for nfe, s, name, row in items:
        label = _label(name, row)
        if reference is not None and row["method"] == reference["method"] and row["settings"] == reference["settings"]:
            label += " (reference)"
        seeds = ", ".join("failed" if math.isnan(f) else f"{f:.2f}" for f in s["fids"])
        fid = _fid_text(s)
        vs = "" if math.isnan(ref_fid) or math.isnan(s["fid"]) else f"{100 * (s['fid'] / ref_fid - 1):+.0f}%"
        div = f"{100 * s['diverged']:.0f}%" if s["diverged"] else "0"
        lines.append(
            f"| {label} | {describe_settings(row['settings'])} | {nfe} | {fid} ({seeds}) | {vs} | "
            f"{s['class_entropy']:.3f} | {s['nn_ratio']:.2f} | {div} | {s['seconds']:.0f} |"
        )
    return "\n".join(lines)


def pivot_table(records: list[tuple[str, dict]], nfes: list[int] | None = None) -> str:
    """Markdown: one line per sampler (``name: method``), one column per NFE, cells ``mean ± sd`` of FID.

    A cell notes the share of diverged samples (its FID is of the rest), reads ``diverged`` when no draw
    had a finite sample, and is empty where the sampler was not drawn at that NFE. ``nfes`` defaults to
    every NFE drawn. ``ValueError`` if one sampler has two different rows at one NFE (one cell each).
    """
    cells: dict[str, dict[int, str]] = {}
    for name, row, s in _unique_rows(records):
        label = _label(name, row)
        if row["nfe"] in cells.setdefault(label, {}):
            raise ValueError(f"{label} has two rows at NFE {row['nfe']}; give one of their files another name=")
        if math.isnan(s["fid"]):
            cell = "diverged"
        else:
            cell = _fid_text(s)
            if s["diverged"]:
                cell += f" ({100 * s['diverged']:.0f}% diverged)"
        cells[label][row["nfe"]] = cell
    nfes = sorted({n for c in cells.values() for n in c}) if nfes is None else nfes
    lines = ["| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for label, by_nfe in cells.items():
        lines.append(f"| {label} | " + " | ".join(by_nfe.get(n, "") for n in nfes) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", nargs="+", required=True, help="[name=]file.json of benchmarks.nfe_table --out")
    p.add_argument("--reference", default=None, help="the reference entry, method:key=value,... (nfe_table syntax)")
    p.add_argument("--pivot", default=None, help="comma-separated NFEs: print one line per sampler, a column per NFE")
    args = p.parse_args(argv)
    records = []
    for item in args.records:
        name, eq, path = item.partition("=")
        name, path = (name, path) if eq else ("", item)
        with open(path) as f:
            records.append((name, json.load(f)))
    reference = None
    if args.reference:
        ((method, settings),) = parse_entries(args.reference)
        reference = find_reference(records, method, settings)
    table = markdown_table(records, reference)
    if args.pivot:
        table = pivot_table(records, [int(n) for n in args.pivot.split(",")]) + "\n\n" + table
    print(table)
    return table


if __name__ == "__main__":
    main()
