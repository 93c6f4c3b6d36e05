"""The process's open-file limit, shared by the API server and the benchmarks.

Every stream, long poll and WebSocket holds a socket, and each socket is a file descriptor;
with the common soft limit of 1,024 one busy client exhausts them long before memory or CPU
matter, and then every other client's connection is reset. The hard limit is what the
administrator allows, so raising the soft limit to it needs no privilege.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

UNLIMITED_TARGET = 1 << 20
"""What "unlimited" is raised to: the kernel refuses RLIM_INFINITY for RLIMIT_NOFILE."""


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (children inherit it);
    returns the soft limit now in force. Never fails: a platform without the `resource`
    module, or a limit the kernel refuses, leaves the limit as it was."""
    try:
        import resource
    except ImportError:  # not POSIX
        return open_file_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else UNLIMITED_TARGET
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return open_file_limit()


def open_file_limit() -> int:
    """The soft open-file limit in force (a large number where there is none)."""
    try:
        import resource
    except ImportError:
        return UNLIMITED_TARGET
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else int(soft)
