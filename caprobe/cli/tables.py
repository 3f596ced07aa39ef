"""Rich tables for the terminal, built from saved records (never from live models)."""

from __future__ import annotations

from rich.table import Table

from caprobe.measure.counting import Counts


def _m(value: float) -> str:
    return f"{value / 1e6:,.2f}M"


def counts_tables(counts: Counts, *, by_module: bool = False, depth: int = 3) -> list[Table]:
    """Summary and per-stage tables for one :class:`Counts`, plus the module breakdown."""
    h, w = counts.input_size
    summary = Table(title=f"{counts.model}  ({h}×{w}, batch 1)", title_justify="left")
    for column in ("params", "MAdds (conv+linear)", "MAdds (total)", "attention params",
                   "attention MAdds", "attention share"):
        summary.add_column(column, justify="right")
    summary.add_row(f"{counts.params:,}", _m(counts.madds), _m(counts.madds_total),
                    f"{counts.attention_params:,}", _m(counts.attention_madds),
                    f"{counts.attention_share:.2%}")
    stages = Table(title="per stage", title_justify="left")
    for column in ("stage", "params", "MAdds", "MAdds (total)", "attn params", "attn MAdds"):
        stages.add_column(column, justify="right" if column != "stage" else "left")
    for s in counts.by_stage:
        stages.add_row(s.stage, f"{s.params:,}", _m(s.madds), _m(s.madds_total),
                       f"{s.attention_params:,}", _m(s.attention_madds))
    tables = [summary, stages]
    if counts.uncounted_ops:
        note = Table(title="operators fvcore could not count", title_justify="left")
        note.add_column("op")
        note.add_column("calls", justify="right")
        for op, calls in counts.uncounted_ops.items():
            note.add_row(op, str(calls))
        tables.append(note)
    if by_module:
        modules = Table(title="per module", title_justify="left")
        for column in ("module", "type", "params", "MAdds", "MAdds (total)"):
            modules.add_column(column, justify="left" if column in ("module", "type") else "right")
        for m in counts.by_module:
            if m.name.count(".") < depth:
                style = "cyan" if m.attention else None
                modules.add_row(m.name, m.type, f"{m.params:,}", _m(m.madds),
                                _m(m.madds_total), style=style)
        tables.append(modules)
    return tables
