"""The reference pages generated from the code, so that each option is described once (in its
pydantic field) and the docs cannot drift from it:

- docs/configuration.md from `service.settings.Settings`: every environment variable, its
  default and its description;
- docs/job-options.md from `api.schemas.JobCreate` (`core.job_spec.PipelineConfig` plus the
  request's ids) and `core.job_spec.Target`: every `POST /jobs` field, its type, default, bounds
  and description, and whether ../shared/API.md names it or it is a FlexBin extension.

    python -m tools.reference_docs            # rewrite both pages
    python -m tools.reference_docs --check    # exit 1 when a page is not current (a test runs this)
"""
from __future__ import annotations

import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from api.schemas import JobCreate
from core.job_spec import Target
from core.paths import REPO_ROOT
from service.settings import Settings

CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"
JOB_OPTIONS = REPO_ROOT / "docs" / "job-options.md"
COMMAND = "python -m tools.reference_docs"

# -- docs/configuration.md ---------------------------------------------------------------------
CONFIGURATION_HEADER = f"""# Configuration

One pydantic `Settings` object (`service/settings.py`) configures the API, the workers, the
database and the demo from environment variables. This table is generated from it
(`{COMMAND}`; a test fails when it is stale).

| variable | default | meaning |
|---|---|---|
"""


def variable(name: str, field: FieldInfo) -> str:
    """The environment variable a field reads: its first alias, else `FLEXBIN_<NAME>`."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"FLEXBIN_{name.upper()}"


def setting_default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20 and value % 2**20 == 0:
        return f"{value // 2**30} GiB" if value % 2**30 == 0 else f"{value // 2**20} MiB"
    if value is None:
        return "auto"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text}`" if text else "empty"


def _cell(text: str | None) -> str:
    """Text as one markdown table cell: on one line, with its "|" escaped."""
    return " ".join((text or "").split()).replace("|", "\\|")


def render_configuration() -> str:
    rows = [f"| `{variable(name, field)}` | {setting_default(field)} | {_cell(field.description)} |"
            for name, field in Settings.model_fields.items()]
    return CONFIGURATION_HEADER + "\n".join(rows) + "\n"


# -- docs/job-options.md -----------------------------------------------------------------------
CONTRACT_FIELDS = frozenset({
    "model_id", "dataset_id", "target", "method", "order", "bits", "finetune_iters", "seed", "activation_bits",
    "distillation_weight", "min_compression_ratio", "max_miss_rate_increase", "max_latency_ms", "min_speedup"})
"""The `POST /jobs` fields ../shared/API.md names (some of them as "planned": all are served now)."""
REQUEST_FIELDS = ("model_id", "dataset_id")

JOB_OPTIONS_HEADER = f"""# Job options (`POST /jobs`)

Every field `POST /jobs` takes, generated from `api.schemas.JobCreate` (`core.job_spec.PipelineConfig`
plus the request's ids) and `core.job_spec.Target` (`{COMMAND}`; a test fails when it is
stale). The running API serves the same descriptions in its OpenAPI schema (`/docs`).

"API.md" says whether the public contract (`../shared/API.md`) names the field; the rest are
FlexBin's extensions, which the contract allows. An option sent as `null` takes its default; an
unknown field, a value out of bounds or an option that does not apply to the job (for example
`staged_schedule` without `activation_bits: 1`) is a 422 whose `detail` names the field.

"""


def type_text(annotation: Any) -> str:
    """`integer`, `number or null`, `"a" / "b"`: a field's annotation as a reader of JSON sees it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " / ".join(f'"{v}"' if isinstance(v, str) else str(v).lower() for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(type_text(a) for a in args)
        return text + (" or null" if len(args) < len(typing.get_args(annotation)) else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"object ({annotation.__name__}, below)"
    if isinstance(annotation, type):
        return {"str": "string", "bool": "boolean", "int": "integer", "float": "number"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation)


BOUNDS: dict[type, tuple[str, str]] = {annotated_types.Ge: ("ge", "≥"), annotated_types.Gt: ("gt", ">"),
                                       annotated_types.Le: ("le", "≤"), annotated_types.Lt: ("lt", "<")}


def bounds(field: FieldInfo) -> str:
    """The field's numeric constraints as `≥ 1, ≤ 4`; empty when it has none."""
    parts = []
    for constraint in field.metadata:
        for kind, (attribute, sign) in BOUNDS.items():
            if isinstance(constraint, kind):
                value = getattr(constraint, attribute)
                parts.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value:g}")
    return ", ".join(parts)


def option_default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    return "`null`" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def options_table(model: type[BaseModel]) -> list[str]:
    rows = ["| field | API.md | type | default | bounds | meaning |", "|---|---|---|---|---|---|"]
    fields = model.model_fields
    for name in sorted(fields, key=lambda n: n not in REQUEST_FIELDS):  # the ids first, else as declared
        field = fields[name]
        rows.append(f"| `{name}` | {'yes' if name in CONTRACT_FIELDS else 'extension'} | "
                    f"{_cell(type_text(field.annotation))} | {option_default(field)} | {bounds(field)} | "
                    f"{_cell(field.description)} |")
    return rows


def render_job_options() -> str:
    lines = [*options_table(JobCreate), "", "## `target`", "", _cell(Target.__doc__), "",
             *options_table(Target), ""]
    return JOB_OPTIONS_HEADER + "\n".join(lines)


# -- both --------------------------------------------------------------------------------------
PAGES: dict[Path, Callable[[], str]] = {CONFIGURATION: render_configuration, JOB_OPTIONS: render_job_options}


def stale_pages() -> list[Path]:
    return [page for page, render in PAGES.items() if not page.exists() or page.read_text() != render()]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_pages()
        for page in stale:
            shown = page.relative_to(REPO_ROOT) if page.is_relative_to(REPO_ROOT) else page
            print(f"{shown} is stale: run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for page, render in PAGES.items():
        page.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
