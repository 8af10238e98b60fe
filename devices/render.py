"""Terminal output of `edge profile`: rich tables; every projected number sits under an ESTIMATE title."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.1f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _assumptions(out: Console, result: dict) -> None:
    out.print(f"[bold yellow]{result['estimate']['label']}[/]. Assumptions:")
    for a in result["estimate"]["assumptions"]:
        out.print(f"  - {a}", highlight=False)


def _machine(out: Console, result: dict) -> None:
    m = result["machine"]
    out.print(f"This machine: {m['threads']} threads, {m['bandwidth']['read_gbs']} GB/s read bandwidth, "
              f"{m['compute']['gflops']} GFLOP/s FP32 matmul (measured, cached).", highlight=False)


def print_profile(out: Console, result: dict) -> None:
    _machine(out, result)
    for b in result["bundles"]:
        for backend, r in b["backends"].items():
            run = r["run"]
            out.print(f"\n[bold]{b['name']}[/] ({backend}, preset {b['preset']}): {run['frames']} frames spoken, "
                      f"first audio {run['first_audio_ms']:.1f} ms, RTF {run['rtf']:.3f}, peak RSS "
                      f"{r['peak_rss_bytes'] / 1e6:.0f} MB ({r['peak_rss_scope']})", highlight=False)
            split = ", ".join(f"{k} {v:.2f}" for k, v in run["per_frame_ms"].items())
            out.print(f"per frame (ms, measured in the loop): {split}; frame budget {run['frame_budget_ms']:.0f} ms",
                      highlight=False)
            table = Table("graph", "recipe", "file MB", "params MB", "alone\nmedian ms", "alone\np90 ms",
                          "in loop\nms/call", "calls\n/frame", "MFLOP\n/call", "MB\n/call",
                          title=f"{b['name']} ({backend}): measured on this machine")
            ops = Table("graph", "op", "ms/call", "share", title=f"{b['name']} ({backend}): top operators "
                        f"({next(iter(r['graphs'].values()))['op_profile']['source']})")
            for g, x in r["graphs"].items():
                flops = "-" if x["flops_per_call"] is None else f"{x['flops_per_call'] / 1e6:.2f}"
                table.add_row(g, x["recipe"], _mb(x["file_bytes"]), _mb(x["parameter_bytes"]),
                              _ms(x["latency_ms"]["median"]), _ms(x["latency_ms"]["p90"]),
                              _ms(x["in_loop_ms_per_call"]), f"{x['calls_per_frame']:g}", flops,
                              _mb(x["bytes_per_call"]))
                for i, o in enumerate(x["op_profile"]["top_ops"][:3]):
                    ops.add_row(g if i == 0 else "", o["op"], _ms(o["ms"]), f"{o['share']:.0%}")
            out.print(table)
            out.print(ops)
            proj = Table("device", "lm_step\nms", "depth_step\nms", "codec\nms", "per frame\nms", "RTF", "real time",
                         "memory\n/ RAM", "fits",
                         title=f"{b['name']} ({backend}) on catalogued devices: ESTIMATE, not measured")
            for d, p in r["projections"].items():
                ms = p["graph_ms"]
                proj.add_row(d, _ms(ms["lm_step"]), _ms(ms["depth_step"]), _ms(ms["codec_decoder"]),
                             _ms(p["per_frame_ms"]), f"{p['rtf']:.3f}", "yes" if p["real_time"] else "[red]no[/]",
                             f"{p['memory_share_of_ram']:.2%}", "yes" if p["fits_in_ram"] else "[red]no[/]")
            out.print(proj)
    _assumptions(out, result)


def print_compare(out: Console, result: dict) -> None:
    _machine(out, result)
    columns = [(b, backend, r) for b in result["bundles"] for backend, r in b["backends"].items()]
    table = Table("", *[f"{b['name']}\n({backend})" for b, backend, _ in columns], title="Bundles side by side")

    def row(label: str, fn) -> None:
        table.add_row(label, *[fn(b, r) for b, _, r in columns])

    row("recipes", lambda b, r: "\n".join(f"{g}={rec}" for g, rec in b["recipes"].items()))
    row("files MB", lambda b, r: _mb(sum(x["file_bytes"] for x in r["graphs"].values())))
    row("memory MB (files + state)", lambda b, r: _mb(r["model_bytes"]))
    row("peak RSS MB (measured)", lambda b, r: f"{r['peak_rss_bytes'] / 1e6:.0f}")
    for g in next(iter(columns))[2]["graphs"]:
        row(f"{g} ms alone (median)", lambda b, r, g=g: _ms(r["graphs"][g]["latency_ms"]["median"]))
    row("per frame ms (measured)", lambda b, r: _ms(sum(r["run"]["per_frame_ms"].values())))
    row("first audio ms (measured)", lambda b, r: _ms(r["run"]["first_audio_ms"]))
    row("RTF (measured)", lambda b, r: f"{r['run']['rtf']:.3f}")
    for d in result["devices"]:
        row(f"RTF on {d} (ESTIMATE)", lambda b, r, d=d: f"{r['projections'][d]['rtf']:.3f}"
            + ("" if r["projections"][d]["fits_in_ram"] else " (does not fit)"))
    out.print(table)
    _assumptions(out, result)
