"""The ``--out FILE|-`` convention of commands that produce public data (certificates, CRLs,
trust bundles): ``-`` is stdout, anything else a file written atomically (mode 0644) that
already existing refuses, before any work, unless ``--force``.

fsutil is imported inside the functions: command modules import this one at their top,
and ``cyphrs --help`` must stay fast.
"""

from __future__ import annotations

import sys


def refuse_existing_output(out: str | None, *, force: bool) -> None:
    """Refuse (exit 7) an ``--out`` file that exists, unless ``force``; ``-`` and no
    ``--out`` (None) write no file and pass."""
    if out is None or out == "-":
        return
    from pathlib import Path

    from cyphrs_cli.fsutil import refuse_existing

    refuse_existing([Path(out)], force=force)


def write_output(out: str, data: bytes) -> None:
    """``data`` as is to stdout for ``-``, else atomically into the public file ``out``."""
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    from pathlib import Path

    from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write

    atomic_write(Path(out), data, mode=PUBLIC_FILE)
