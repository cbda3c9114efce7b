"""`python -m reformer.config`: every config field, group by group, with its default, its
allowed values, what a resumed run must keep of it, and its doc, as Markdown (the text of
docs/config.md)."""

from __future__ import annotations

from reformer.config.schema import FREE, GROUPS, ON_OFF


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _resume(resume: str) -> str:
    return {FREE: "", ON_OFF: "on/off"}.get(resume, "same")


def schema_markdown() -> str:
    """The schema as Markdown: one table per group."""
    lines = [
        "# Config fields",
        "",
        "Every field of `reformer/config/schema.py`, as `python -m reformer.config` prints it.",
        "Set them in a config file (`c.model.n_hashes = 4`) or on the command line",
        "(`--config.model.n_hashes=4`). *Resume*: what a run resumed from a checkpoint must",
        "keep (*same*: the value; *on/off*: whether it is above 0; empty: nothing).",
    ]
    for group, members in GROUPS.items():
        lines += ["", f"## `{group}`", "", "| field | default | allowed | resume | doc |"]
        lines.append("|---|---|---|---|---|")
        for name, field in members.items():
            allowed = field.rule.text if field.rule else ""
            lines.append(
                f"| `{group}.{name}` | `{field.default!r}` | {_cell(allowed)} | "
                f"{_resume(field.resume)} | {_cell(field.doc)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")
