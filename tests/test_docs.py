"""The docs stay true: the README documents every setting, the configuration tables (README,
docs/service.md) give the defaults `Settings` uses, and the two commands are there."""
from __future__ import annotations

import re

from core.paths import REPO_ROOT
from service.settings import Settings


def _env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if alias is not None:
        return next(a for a in alias.choices if isinstance(a, str) and a.isupper())
    return f"FLEXBIN_{name.upper()}"


def test_readme_documents_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [_env_name(n) for n in Settings.model_fields if f"`{_env_name(n)}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_has_the_two_commands_and_ci_calls_make_test() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


# -- documented defaults ----------------------------------------------------------------------
ENV_NAME = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "M": 10**6}
WORDS = {"empty": "", "auto": None}


def _field_by_env() -> dict[str, str]:
    return {_env_name(name): name for name in Settings.model_fields}


def _expand(names: list[str], known: dict[str, str]) -> list[str]:
    """`FLEXBIN_MAX_DETECT_IMAGES / _PIXELS` -> FLEXBIN_MAX_DETECT_IMAGES, FLEXBIN_MAX_DETECT_PIXELS:
    a name written as a suffix shares a prefix of the first name (the one that is a setting)."""
    first, out = names[0], [names[0]]
    for name in names[1:]:
        if not name.startswith("_"):
            out.append(name)
            continue
        cuts = [first] + [first[:i] for i, c in enumerate(first) if c == "_"]
        out.append(next((c + name for c in cuts if c + name in known), first + name))
    return out


def _documented_defaults(path: str) -> list[tuple[str, str]]:
    """(environment variable, documented default) for each row of the file's configuration table."""
    rows = []
    for line in (REPO_ROOT / path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = [n.strip().strip("`") for n in cells[0].split(" / ")]
        if len(cells) < 3 or not cells[0].startswith("`") or not all(ENV_NAME.match(n) for n in names):
            continue
        defaults = [d.strip() for d in cells[1].split(" / ")]
        assert len(defaults) == len(names), f"{path}: {line}"
        rows.extend(zip(_expand(names, _field_by_env()), defaults, strict=True))
    return rows


def _parse(documented: str) -> object:
    if documented.startswith("`") and documented.endswith("`"):
        return documented.strip("`")
    if documented in WORDS:
        return WORDS[documented]
    number, _, unit = documented.partition(" ")
    return float(number) * UNITS[unit] if unit else float(number)


def _same(documented: object, actual: object) -> bool:
    if isinstance(actual, bool):
        return documented == str(actual).lower()
    if isinstance(actual, int | float) and not isinstance(actual, bool):
        return documented is not None and float(documented) == float(actual)  # type: ignore[arg-type]
    return documented == actual


def test_documented_defaults_are_the_settings_defaults() -> None:
    """Each default in the configuration tables of the README and docs/service.md is what
    `Settings` uses (as written before any validation: relative SQLite paths, say)."""
    known = _field_by_env()
    for path in ("README.md", "docs/service.md"):
        rows = _documented_defaults(path)
        assert {"FLEXBIN_DEMO_TRAIN_ITERS", "FLEXBIN_DEMO_FINETUNE_ITERS"} <= {env for env, _ in rows}, path
        for env, documented in rows:
            assert env in known, f"{path} documents {env}, which is not a setting"
            field = Settings.model_fields[known[env]]
            if field.default_factory is not None:  # computed at start-up (FLEXBIN_DEMO_DATA)
                continue
            assert _same(_parse(documented), field.default), \
                f"{path}: {env} documented as {documented}, the default is {field.default!r}"
