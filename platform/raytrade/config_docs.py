"""Generate docs/CONFIG.md, the configuration reference, from the pydantic models of :mod:`raytrade.config`:
``python -m raytrade.config_docs [OUT]``. A test keeps the file in sync with the code."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from raytrade.config import PipelineConfig


def _type(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("|", "\\|")


def _default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    return f"`{value!r}`".replace("|", "\\|")


def config_markdown() -> str:
    """Markdown: one table per section of :class:`~raytrade.config.PipelineConfig` (field, type, default,
    meaning), in the order of the model, with each section's docstring."""
    lines = ["# Configuration reference", "",
             "Generated from `platform/raytrade/config.py` by `python -m raytrade.config_docs`; a test keeps it in "
             "sync. Every pipeline, job and notebook reads ONE YAML file of these sections (see "
             "`jobs/configs/smoke.yaml`, `demo.yaml`, `gpu.yaml`); unknown keys are errors that name the field. "
             "Override a field on the command line or in a job with `--set SECTION.FIELD=VALUE` (a YAML value).", "",
             "Units: horizons, lookbacks, embargoes and windows in **bars**; costs in **basis points**; thresholds, "
             "returns and drawdowns as **fractions**.", "",
             "## Top level", "", "| field | type | default | meaning |", "|---|---|---|---|"]
    sections = []
    for name, field in PipelineConfig.model_fields.items():
        if isinstance(field.default, BaseModel):
            sections.append((name, type(field.default)))
        else:
            lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field.default)} | "
                         f"{field.description or ''} |")
    for name, model in sections:
        doc = inspect.cleandoc(model.__doc__ or "").replace("\n\n", "\n").splitlines()
        lines += ["", f"## `{name}`", "", " ".join(doc).strip(), "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        for field_name, field in model.model_fields.items():
            default = _default(field.get_default(call_default_factory=True))
            lines.append(f"| `{name}.{field_name}` | {_type(field.annotation)} | {default} | "
                         f"{(field.description or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/CONFIG.md")
    out.write_text(config_markdown())
    print(f"wrote {out}")
