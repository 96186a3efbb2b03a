"""How to do things on a host: command templates (INI property files) and the runners that run
the rendered argv lists. Nothing here knows what a volume is.

The SSH runner is in ``hostcmds.ssh``, imported only where a host is reached over SSH: asyncssh
and the cryptography it loads take about a fifth of a second to import, which every server
start and every CLI command would otherwise pay."""

from hostcmds.errors import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    HostAuthFailed,
    HostCommandError,
    HostKeyRejected,
    HostUnreachable,
    MissingValueError,
    TemplateError,
    UnsafeValueError,
)
from hostcmds.local import LocalRunner
from hostcmds.recording import RecordedCall, RecordingRunner, Reply, UnscriptedCommand
from hostcmds.runner import CommandResult, CommandRunner, StreamingRunner
from hostcmds.templates import CommandTemplates, Template, load_templates, parse_template

__all__ = [
    "CommandError",
    "CommandNotFound",
    "CommandResult",
    "CommandRunner",
    "CommandTemplates",
    "CommandTimeout",
    "HostAuthFailed",
    "HostCommandError",
    "HostKeyRejected",
    "HostUnreachable",
    "LocalRunner",
    "MissingValueError",
    "RecordedCall",
    "RecordingRunner",
    "Reply",
    "StreamingRunner",
    "Template",
    "TemplateError",
    "UnsafeValueError",
    "UnscriptedCommand",
    "load_templates",
    "parse_template",
]
