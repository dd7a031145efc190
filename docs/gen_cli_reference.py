#!/usr/bin/env python3
"""Generate docs/cli.md, the reference of the ``teach`` command line, from the typer app itself.

    python docs/gen_cli_reference.py            # (re)write docs/cli.md
    python docs/gen_cli_reference.py --check    # exit 1 if docs/cli.md is out of date
    python docs/gen_cli_reference.py --stdout   # print instead of writing

The script walks ``typer.main.get_command(teachclip.cli.app)`` recursively (every command and every
sub-command group, in the order ``teach --help`` lists them), so commands added to the CLI later
appear without changing this file. The output depends only on the code (and on typer's rendering of
usage lines and type names), never on the terminal: no width, no colours; rich markup in help
strings is reduced to its plain text, as ``--help`` shows it.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
OUTPUT = DOCS / "cli.md"
REGENERATE = "python docs/gen_cli_reference.py"

# Document this checkout's CLI, even when another copy of teachclip is installed.
sys.path.insert(0, str(REPO))


# ---- text helpers -------------------------------------------------------------------------------


def plain_paragraphs(text: str | None, markup_mode: str | None) -> list[str]:
    """Help text as typer shows it, without styling: dedented, cut at ``\\f``, one string per paragraph
    (single line breaks joined, ``\\b`` paragraphs kept line by line), rich markup removed."""
    text = inspect.cleandoc(text or "").partition("\f")[0].strip()
    if not text:
        return []
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.startswith("\b"):
            lines = [line.rstrip() for line in paragraph.strip("\b\n").splitlines()]
            paragraph = "\n".join(lines)
        elif markup_mode != "markdown":
            paragraph = " ".join(line.strip() for line in paragraph.splitlines())
        if markup_mode == "rich":
            paragraph = strip_rich_markup(paragraph)
        paragraphs.append(paragraph.strip())
    return [p for p in paragraphs if p]


def strip_rich_markup(text: str) -> str:
    """``[bold]x[/bold]`` -> ``x``; ANSI escapes removed; text that is not markup is kept as it is."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    try:
        from rich.text import Text
    except ImportError:  # typer without rich renders no markup either
        return text
    try:
        return Text.from_markup(text, emoji=False).plain
    except Exception:  # malformed markup: typer would fail too; keep the raw text
        return text


_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def md_inline(text: str, *, in_table: bool = False) -> str:
    """Escape Markdown/HTML specials outside backtick code spans; ``|`` everywhere inside a table."""
    out = []
    position = 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_escape_prose(text[position : match.start()]))
        out.append(match.group(0))
        position = match.end()
    out.append(_escape_prose(text[position:]))
    result = "".join(out)
    if in_table:
        result = result.replace("|", "\\|").replace("\n", "<br>")
    return result


def _escape_prose(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    # an underscore at a word boundary could start emphasis; inside a word (train_student) it cannot
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", title.lower())
    return slug.replace(" ", "-")


# ---- walking the command tree ------------------------------------------------------------------


def is_group(command: Any) -> bool:
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def markup_mode_of(command: Any, inherited: str | None) -> str | None:
    return getattr(command, "rich_markup_mode", inherited)


def walk(command: Any, ctx: Any, markup_mode: str | None) -> Iterator[tuple[Any, Any, str | None]]:
    """(command, context, markup mode) for ``command`` and, depth first, every visible sub-command."""
    yield command, ctx, markup_mode
    if not is_group(command):
        return
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        sub_ctx = sub.context_class(sub, parent=ctx, info_name=name)
        yield from walk(sub, sub_ctx, markup_mode_of(sub, markup_mode))


def subcommands(command: Any, ctx: Any) -> list[tuple[str, Any]]:
    found = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is not None and not getattr(sub, "hidden", False):
            found.append((name, sub))
    return found


def depth(ctx: Any) -> int:
    level = 0
    while ctx.parent is not None:
        level, ctx = level + 1, ctx.parent
    return level


# ---- one parameter ------------------------------------------------------------------------------


def param_names(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        # the name typer's --help shows (also in the usage line), else click's upper-case one
        name = getattr(param, "display_name_raw", None) or getattr(param, "metavar", None) or param.name.upper()
        return code(name)
    names = [code(opt) for opt in sorted(param.opts, key=lambda o: (not o.startswith("--"), o))]
    text = ", ".join(names)
    if param.secondary_opts:
        text += " / " + ", ".join(code(opt) for opt in param.secondary_opts)
    return text


def param_type(param: Any, ctx: Any) -> str:
    if getattr(param, "count", False):
        return "count"
    if getattr(param, "is_flag", False):
        return "flag"
    label = None
    if hasattr(param, "display_type"):  # typer's own rendering: <int>, <path>, <int range>, ...
        try:
            label = param.display_type(ctx)
        except Exception:
            label = None
    if label is None:
        click_type = getattr(param, "type", None)
        label = getattr(click_type, "name", None) or "text"
        if hasattr(click_type, "choices"):
            label = "|".join(str(choice) for choice in click_type.choices)
    label = label.strip("<>")
    range_text = None
    if hasattr(param, "_get_number_range_help_str"):
        range_text = param._get_number_range_help_str()
    if range_text:
        label = f"{label} ({range_text})"
    if label.startswith("list[") and label.endswith("]"):  # typer: list[str], list[Path]
        label = label[len("list[") : -1].lower()
        if not getattr(param, "multiple", False):
            label += ", several"
    if getattr(param, "multiple", False):
        label += ", repeatable"
    return label


def param_default(param: Any, ctx: Any) -> str:
    if getattr(param, "required", False):
        return "required"
    show_default = getattr(param, "show_default", None)
    if isinstance(show_default, str):
        return show_default
    try:
        value = param.get_default(ctx, call=False)
    except TypeError:
        value = param.get_default(ctx)
    except Exception:
        value = None
    if callable(value):
        return "(dynamic)"
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        if value is None:
            return ""
        if param.secondary_opts:
            return code(param.opts[0] if value else param.secondary_opts[0])
        return "on" if value else "off"
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(code(str(v)) for v in value)
    if isinstance(value, enum.Enum):
        value = value.value
    return code(str(value))


def param_row(param: Any, ctx: Any, markup_mode: str | None) -> str:
    help_text = "\n".join(plain_paragraphs(getattr(param, "help", None), markup_mode))
    # names and defaults are code spans; md_inline escapes only their "|" (which GFM tables need)
    cells = [md_inline(text, in_table=True)
             for text in (param_names(param), param_type(param, ctx), param_default(param, ctx), help_text)]
    return "| " + " | ".join(cells) + " |"


def visible_params(command: Any, ctx: Any) -> list[Any]:
    help_option = None
    if hasattr(command, "get_help_option"):
        help_option = command.get_help_option(ctx)
    return [param for param in command.params if param is not help_option and not getattr(param, "hidden", False)]


# ---- one command --------------------------------------------------------------------------------


def usage_line(command: Any, ctx: Any) -> str:
    return " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)]).strip()


def command_section(command: Any, ctx: Any, markup_mode: str | None) -> list[str]:
    level = depth(ctx)
    lines = ["#" * min(2 + max(level - 1, 0), 6) + " " + code(ctx.command_path), ""]
    if getattr(command, "deprecated", False):
        message = command.deprecated if isinstance(command.deprecated, str) else ""
        lines += [("**Deprecated.** " + md_inline(message)).strip(), ""]
    lines += ["```", usage_line(command, ctx), "```", ""]
    for paragraph in plain_paragraphs(command.help, markup_mode):
        lines += [md_inline(paragraph).replace("\n", "  \n"), ""]
    if is_group(command) and ctx.parent is not None:  # the root's commands are the table at the top
        children = subcommands(command, ctx)
        if children:
            lines += ["| command | what it does |", "|---|---|"]
            for name, sub in children:
                title = f"{ctx.command_path} {name}"
                lines.append(f"| [{code(title)}](#{anchor(title)}) | {md_inline(short_help(sub, markup_mode), in_table=True)} |")
            lines.append("")
    params = visible_params(command, ctx)
    arguments = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
    options = [p for p in params if getattr(p, "param_type_name", "") != "argument"]
    for title, group in (("Arguments", arguments), ("Options", options)):
        if not group:
            continue
        lines += [f"**{title}**", "", "| name | type | default | description |", "|---|---|---|---|"]
        lines += [param_row(param, ctx, markup_mode) for param in group]
        lines.append("")
    for paragraph in plain_paragraphs(getattr(command, "epilog", None), markup_mode):
        lines += [md_inline(paragraph), ""]
    return lines


def short_help(command: Any, markup_mode: str | None) -> str:
    if getattr(command, "short_help", None):
        return plain_paragraphs(command.short_help, markup_mode)[0]
    paragraphs = plain_paragraphs(command.help, markup_mode)
    return paragraphs[0] if paragraphs else ""


# ---- the page -----------------------------------------------------------------------------------


def generate(app: Any = None) -> str:
    """The page for ``app`` (default: ``teachclip.cli.app``)."""
    import typer.main

    if app is None:
        from teachclip.cli import app

    root = typer.main.get_command(app)
    program = root.name or "teach"
    root_ctx = root.context_class(root, info_name=program)
    entries = list(walk(root, root_ctx, markup_mode_of(root, None)))

    lines = [
        "# CLI reference",
        "",
        f"<!-- Generated from the typer app `teachclip.cli:app`; do not edit. Regenerate with: {REGENERATE} -->",
        "",
        f"*This file is generated from the code. Regenerate it with `{REGENERATE}`;*",
        f"*`{REGENERATE} --check` exits 1 when it is out of date.*",
        "",
        f"Every command reads `params.yaml` (or the file given to the global `{program} --params FILE`, which",
        f"goes **before** the command name: `{program} --params params/msrvtt-b32.yaml decode ...`). Options",
        "whose default is empty take their value from that file (the section named in the description,",
        "typed in `teachclip/pipeline/config.py`); a flag overrides that single value. Every command also",
        "accepts `--help`. Usage lines are typer's: `[OPTIONS]`, `{required}` and `[optional]` arguments.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for command, ctx, mode in entries[1:]:
        title = ctx.command_path
        indent = "&nbsp;&nbsp;" * (depth(ctx) - 1)
        lines.append(f"| {indent}[{code(title)}](#{anchor(title)}) | {md_inline(short_help(command, mode), in_table=True)} |")
    lines.append("")
    for command, ctx, mode in entries:
        lines += command_section(command, ctx, mode)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(line.rstrip() for line in lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/cli.md from the teach typer app.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; write nothing")
    parser.add_argument("--stdout", action="store_true", help="print the page instead of writing it")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"file to write or check (default: {OUTPUT})")
    args = parser.parse_args(argv)

    text = generate()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    if current != text:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(f"{args.output} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
