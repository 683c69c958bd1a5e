"""Atomic JSON writes: a reader sees the old file or the new one, never half of one."""

import json
import threading

from core.files import atomic_write_json


def test_a_write_replaces_the_file_whole_and_leaves_no_partial(tmp_path) -> None:
    path = tmp_path / "status.json"
    atomic_write_json(path, {"step": 1})
    atomic_write_json(path, {"step": 2, "text": "é"})
    assert json.loads(path.read_text()) == {"step": 2, "text": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_readers_never_see_half_a_file_while_writers_race(tmp_path) -> None:
    path = tmp_path / "status.json"
    atomic_write_json(path, {"n": 0, "pad": "x" * 50_000})
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(json.loads(path.read_text())["n"])  # raises on a half-written file

    reader = threading.Thread(target=read)
    reader.start()
    writers = [
        threading.Thread(
            target=lambda w=w: [
                atomic_write_json(path, {"n": w * 100 + i, "pad": "x" * 50_000}) for i in range(20)
            ]
        )
        for w in range(3)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    stop.set()
    reader.join(timeout=60)
    assert seen and not reader.is_alive()
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
