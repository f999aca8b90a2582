"""What the `smoothgen` command's parsers share (`smoothgen.cli` and the subcommands' modules), apart from
`smoothgen.cli` so that those modules, which `cli` imports to add their parsers, do not import it back."""
from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each default once: not for None (those options say in their help what they default to), flags,
    or a help text that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text:
            return text
        return super()._get_help_string(action)
