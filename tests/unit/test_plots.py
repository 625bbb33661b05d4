"""The benchmark figures: each writes a valid SVG that carries its labels and data."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from bench.plots import (
    LoadPoint,
    Probe,
    SoakSample,
    fairness_timeline,
    load_curves,
    soak_memory,
)


def _texts(path: Path) -> str:
    root = ET.parse(path).getroot()  # parses: the file is well-formed XML
    assert root.tag.endswith("svg")
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def test_load_curves_show_both_servers_work_and_latency(tmp_path: Path) -> None:
    curves = {
        "ours": [LoadPoint(1.0, 1.0, 3.0, 5.0), LoadPoint(2.0, 1.9, 6.0, 9.0, refusals=4)],
        "infinity": [LoadPoint(1.0, 1.0, 4.0, 7.0), LoadPoint(2.0, 1.5, 30.0, 60.0)],
    }
    path = load_curves(tmp_path / "out" / "load.svg", curves, {"ours": 2.4, "infinity": 2.1},
                       "RAG mix")
    text = _texts(path)
    for label in ("ours p50", "ours p99", "infinity p99", "ours, closed loop",
                  "offered load (documents/s)", "completed work", "RAG mix"):
        assert label in text


def test_fairness_timeline_marks_the_big_request(tmp_path: Path) -> None:
    alone = [Probe(0.1 * i, 0.02) for i in range(10)]
    shared = [Probe(0.1 * i, 0.05) for i in range(20)]
    text = _texts(fairness_timeline(tmp_path / "f.svg", alone, shared, (0.0, 2.5), 500_000))
    assert "500,000-token request in flight" in text and "sharing the server" in text


def test_soak_figure_has_memory_and_rate(tmp_path: Path) -> None:
    samples = [SoakSample(60.0 * i, 900 + i, 10.0, 0.5) for i in range(1, 6)]
    text = _texts(soak_memory(tmp_path / "s.svg", samples, "Soak: 8 clients"))
    assert "RSS (MB)" in text and "requests/s (200)" in text and "last third" in text


def test_figures_are_reproducible(tmp_path: Path) -> None:
    samples = [SoakSample(60.0 * i, 900 + i, 10.0, 0.5) for i in range(1, 4)]
    first = soak_memory(tmp_path / "a.svg", samples, "t").read_bytes()
    second = soak_memory(tmp_path / "b.svg", samples, "t").read_bytes()
    assert first == second  # no dates or random ids: a re-run diffs only where data moved
