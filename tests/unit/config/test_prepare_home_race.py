"""``config.home.prepare_home_dir`` while another process's failed ``init-root`` removes
the fresh home it made (``fsutil.HomeLock.abandon_fresh_home``): the directory vanishes
between the checks. Found as an exit 1 ("internal error: FileNotFoundError") in
``test_creation_races.py::test_failing_creators_never_remove_the_winners_home``. A real
directory created and removed by a real thread, as fast as it can."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from cyphrs_cli.config.home import CaHome, prepare_home_dir


def test_a_home_that_vanishes_while_it_is_prepared_is_a_missing_home(tmp_path: Path) -> None:
    home = CaHome(tmp_path / "home")
    stop = threading.Event()

    def toggle() -> None:  # a failing creator making and removing the same fresh home
        while not stop.is_set():
            try:
                os.mkdir(home.root, 0o700)
                os.rmdir(home.root)
            except OSError:
                pass

    thread = threading.Thread(target=toggle, daemon=True)
    thread.start()
    errors: list[BaseException] = []
    deadline = time.monotonic() + 3.0
    calls = 0
    try:
        while time.monotonic() < deadline and calls < 100_000:
            calls += 1
            try:
                prepare_home_dir(home)
            except BaseException as error:  # reported below, with its type
                errors.append(error)
                break
    finally:
        stop.set()
        thread.join(timeout=10)
    assert errors == [], f"{type(errors[0]).__name__} after {calls} calls: {errors[0]}"
