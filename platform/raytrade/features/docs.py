"""Generate docs/FEATURES.md from the feature registries (per-symbol and cross-sectional):
``python -m raytrade.features.docs [OUT]``."""

from __future__ import annotations

import sys
from pathlib import Path

from raytrade.config import FeatureConfig
from raytrade.features.cross_sectional import cross_sectional_specs
from raytrade.features.technical import feature_specs, warmup_bars


def features_markdown(cfg: FeatureConfig | None = None) -> str:
    """Markdown tables of every feature: name, group, lookback (bars), formula / TA-Lib function; then the
    cross-sectional ``xs_`` columns of universe runs."""
    cfg = cfg or FeatureConfig()
    specs = feature_specs(cfg, cross_asset=True)
    lines = [
        "# Features",
        "",
        "Generated from the registry in `platform/raytrade/features/technical.py` by "
        "`python -m raytrade.features.docs` (default `FeatureConfig`); a test keeps it in sync.",
        "",
        f"{len(specs)} features ({len(specs) - 3} per symbol + 3 cross-asset ones when several symbols are "
        f"present). Every value at bar t uses bars <= t only. *Lookback* = leading bars whose value is "
        f"undefined; the warm-up left out before training is the largest: {warmup_bars(cfg)} bars "
        f"({warmup_bars(cfg, cross_asset=True)} with cross-asset features).",
        "",
        "| # | name | group | lookback (bars) | formula / source |",
        "|---:|---|---|---:|---|",
    ]
    for i, s in enumerate(specs, 1):
        lines.append(f"| {i} | `{s.name}` | {s.group} | {s.lookback} | {s.formula.replace('|', '&#124;')} |")
    xs = cross_sectional_specs(cfg)
    lines += [
        "",
        "## Cross-sectional features (universe runs)",
        "",
        f"Generated from `platform/raytrade/features/cross_sectional.py` (its docstring has the full definitions). "
        f"{len(xs)} `xs_` columns, on when several symbols are present (`features.cross_sectional`; window "
        f"{cfg.cross_sectional_window} bars, beta window {cfg.beta_window} bars). At timestamp t the cross-section "
        f"is the symbols with a complete per-symbol row at exactly t: a symbol in its own warm-up, or without a bar "
        f"at t, does not count. The lookback is counted in the symbol's own bars, or (beta, correlation) in its "
        f"rows in the cross-section; those rows are left out of training like the warm-up.",
        "",
        "| # | name | lookback | formula / source |",
        "|---:|---|---:|---|",
    ]
    for i, s in enumerate(xs, len(specs) + 1):
        unit = s.counted_in[:-1] if s.lookback == 1 else s.counted_in
        lines.append(f"| {i} | `{s.name}` | {s.lookback} {unit} | {s.formula.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("docs/FEATURES.md")
    out.write_text(features_markdown())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
