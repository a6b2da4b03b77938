"""Markdown tables for BENCHMARKS.md from bench.run / bench.build_refs results.

python -m bench.report bench/results-tiny.json [more.json ...]
"""
from __future__ import annotations

import json
import sys

IMPLS = ("ours", "diffusers", "monai")


def _t(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _clean(row: dict, max_stall: float = 0.1) -> str:
    """Kept samples during which no task waited for a CPU more than max_stall of the time (PSI), of all."""
    if "stall" not in row:
        return "n/a"
    stalls = [s for impl in IMPLS for s in row["stall"][impl]]
    return f"{sum(s <= max_stall for s in stalls)}/{len(stalls)}"


def timing_table(result: dict) -> str:
    lines = [f"`{result['command']}` (load {', '.join(f'{x:.1f}' for x in result['machine_start']['load_average'])}"
             f" -> {', '.join(f'{x:.1f}' for x in result['machine_end']['load_average'])}; "
             f"ceiling {result['ceiling_gflops']['used']:.0f} GFLOP/s; "
             f"threads {result['machine_start']['torch_threads']})",
             "",
             "| row | batch | ours | diffusers | MONAI | ours per image | speed vs diffusers | speed vs MONAI "
             "| GFLOP (ours) | MFU ours / diffusers / MONAI | clean samples |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        med, ratio, mfu = r["median_s"], r["speed_ratio_vs_ours"], r["mfu"]
        per_image = r.get("per_image_50_steps_s", r["per_image_s"])["ours"]
        note = f" ({r['ddim_steps']} steps timed, x{50 / r['ddim_steps']:g})" if r.get("ddim_steps", 50) != 50 else ""
        lines.append(f"| {r['row']}{note} | {r['batch']} | " + " | ".join(_t(med[i]) for i in IMPLS)
                     + f" | {_t(per_image)} | {ratio['diffusers']:.2f}x | {ratio['monai']:.2f}x | "
                     f"{r['gflop']['ours']:.1f} | " + " / ".join(f"{100 * mfu[i]:.0f}%" for i in IMPLS)
                     + f" | {_clean(r)} |")
    return "\n".join(lines)


def params_table(rows: list[dict]) -> str:
    lines = ["| model | impl | parameters | vs ours | unexplained |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['impl']} | {r['params']:,} | {r['diff_pct']:+.2f}% | {r['unexplained']} |")
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        with open(path) as f:
            result = json.load(f)
        print(f"## {path}\n\n{params_table(result['params'])}\n\n{timing_table(result)}\n")


if __name__ == "__main__":
    main()
