"""How to do things on a host: command templates (INI property files) and the runners that run
the rendered argv lists. Nothing here knows what a volume is."""

from hostcmds.errors import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    HostCommandError,
    MissingValueError,
    TemplateError,
    UnsafeValueError,
)
from hostcmds.local import LocalRunner
from hostcmds.recording import RecordedCall, RecordingRunner, Reply, UnscriptedCommand
from hostcmds.runner import CommandResult, CommandRunner, StreamingRunner
from hostcmds.ssh import (
    HostAuthFailed,
    HostKeyRejected,
    HostUnreachable,
    SshHost,
    SshRunner,
    parse_ssh_url,
    ssh_runner,
)
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
    "SshHost",
    "SshRunner",
    "StreamingRunner",
    "Template",
    "TemplateError",
    "UnsafeValueError",
    "UnscriptedCommand",
    "load_templates",
    "parse_ssh_url",
    "parse_template",
    "ssh_runner",
]
