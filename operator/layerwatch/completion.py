"""Shell completion scripts for bash, zsh and fish, generated from the CLI's own parser.

Generating them from the argparse tree keeps them true as options come and go: a new flag or a
new choice completes without anyone editing three scripts by hand. Options whose value is a path
(their metavar is FILE or PATH) complete file names; choices complete their values.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence

__all__ = ["SHELLS", "script"]


@dataclasses.dataclass(frozen=True)
class _Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...]
    files: bool
    repeats: bool


@dataclasses.dataclass(frozen=True)
class _Command:
    name: str
    help: str
    options: tuple[_Option, ...]
    words: tuple[str, ...]
    """Values the positional arguments can take, when they are a fixed set."""


def _help(action: argparse.Action) -> str:
    text = action.help if isinstance(action.help, str) and action.help != argparse.SUPPRESS else ""
    return " ".join(text.split())


def _commands(parser: argparse.ArgumentParser) -> list[_Command]:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: _help(choice) for choice in subparsers._choices_actions}
    commands = []
    for name, sub in subparsers.choices.items():
        options: list[_Option] = []
        words: list[str] = []
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            choices = tuple(str(c) for c in action.choices or ())
            if not action.option_strings:
                words += choices
                continue
            metavar = str(action.metavar or "")
            options.append(
                _Option(
                    flags=tuple(action.option_strings),
                    help=_help(action),
                    takes_value=action.nargs != 0,
                    choices=choices,
                    files=metavar in ("FILE", "PATH"),
                    repeats=isinstance(action, argparse._AppendAction),
                )
            )
        commands.append(_Command(name, helps.get(name, ""), tuple(options), tuple(words)))
    return commands


def _bash(commands: Sequence[_Command]) -> str:
    lines = [
        '# bash completion for layerwatch: eval "$(layerwatch completion bash)"',
        "_layerwatch() {",
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    COMPREPLY=()",
        "    if [[ $COMP_CWORD -eq 1 ]]; then",
        f'        COMPREPLY=($(compgen -W "{" ".join(c.name for c in commands)}" -- "$cur"))',
        "        return",
        "    fi",
        '    case "${COMP_WORDS[1]}" in',
    ]
    for command in commands:
        lines.append(f"    {command.name})")
        lines.append('        case "$prev" in')
        for option in command.options:
            if not option.takes_value:
                continue
            flags = "|".join(option.flags)
            if option.choices:
                values = " ".join(option.choices)
                lines.append(f'        {flags}) COMPREPLY=($(compgen -W "{values}" -- "$cur")); return;;')
            elif option.files:
                lines.append(f'        {flags}) COMPREPLY=($(compgen -f -- "$cur")); return;;')
            else:
                lines.append(f"        {flags}) return;;")
        lines.append("        esac")
        flags = " ".join(flag for option in command.options for flag in option.flags)
        lines.append(
            f'        if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "{flags}" -- "$cur")); return; fi'
        )
        if command.words:
            lines.append(f'        COMPREPLY=($(compgen -W "{" ".join(command.words)}" -- "$cur"))')
        lines.append("        ;;")
    lines += ["    esac", "}", "complete -o default -F _layerwatch layerwatch", ""]
    return "\n".join(lines)


def _zsh_text(text: str) -> str:
    """Help text inside a single-quoted _arguments spec: no brackets, colons or quotes."""
    return text.replace("[", "(").replace("]", ")").replace(":", " -").replace("'", "")


def _zsh(commands: Sequence[_Command]) -> str:
    lines = [
        "#compdef layerwatch",
        "# zsh completion for layerwatch: source <(layerwatch completion zsh)",
        "_layerwatch() {",
        "    local -a commands",
        "    commands=(",
        *(f"        '{c.name}:{_zsh_text(c.help)}'" for c in commands),
        "    )",
        "    if (( CURRENT == 2 )); then",
        "        _describe -t commands 'layerwatch command' commands",
        "        return",
        "    fi",
        "    local command=$words[2]",
        "    shift words",
        "    (( CURRENT-- ))",
        "    case $command in",
    ]
    for command in commands:
        specs = []
        for option in command.options:
            action = ""
            if option.takes_value:
                values = (
                    f"({' '.join(option.choices)})" if option.choices else "_files" if option.files else " "
                )
                action = f":{option.flags[-1].lstrip('-')}:{values}"
            star = "*" if option.repeats else ""
            specs += [f"'{star}{flag}[{_zsh_text(option.help)}]{action}'" for flag in option.flags]
        specs.append(f"'*:argument:({' '.join(command.words)})'" if command.words else "'*:argument:_files'")
        lines.append(f"    {command.name})")
        lines.append("        _arguments -s \\")
        lines += [f"            {spec} \\" for spec in specs[:-1]]
        lines.append(f"            {specs[-1]}")
        lines.append("        ;;")
    lines += [
        "    esac",
        "}",
        'if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then _layerwatch "$@"; '
        "else compdef _layerwatch layerwatch; fi",
        "",
    ]
    return "\n".join(lines)


def _fish_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _fish(commands: Sequence[_Command]) -> str:
    lines = [
        "# fish completion for layerwatch: layerwatch completion fish | source",
        "complete -c layerwatch -f",
    ]
    for command in commands:
        about = _fish_text(command.help)
        lines.append(f"complete -c layerwatch -n __fish_use_subcommand -a {command.name} -d '{about}'")
    for command in commands:
        when = f"-n '__fish_seen_subcommand_from {command.name}'"
        for option in command.options:
            names = " ".join(
                f"-s {flag[1:]}" if not flag.startswith("--") else f"-l {flag[2:]}" for flag in option.flags
            )
            value = ""
            if option.takes_value:
                value = (
                    f" -xa '{' '.join(option.choices)}'"
                    if option.choices
                    else " -rF"
                    if option.files
                    else " -x"
                )
            lines.append(f"complete -c layerwatch {when} {names}{value} -d '{_fish_text(option.help)}'")
        if command.words:
            lines.append(f"complete -c layerwatch {when} -xa '{' '.join(command.words)}'")
    return "\n".join(lines) + "\n"


SHELLS: dict[str, Callable[[Sequence[_Command]], str]] = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (bash, zsh or fish) covering every command of ``parser``."""
    return SHELLS[shell](_commands(parser))
