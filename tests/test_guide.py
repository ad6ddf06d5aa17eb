"""The patient guide covers the seed article, corrects what current guidance changed, and is cited."""

from __future__ import annotations

import subprocess
import sys


def test_guide_corrects_the_superseded_seed_advice(kb):
    sections = {s.id: s for s in kb.guide}
    for sid in ("pregnancy", "breastfeeding", "time-to-benefit"):
        assert sections[sid].correction, sid
        assert "seed" in sections[sid].sources, sid
    assert "2 mg per kg" in sections["pregnancy"].text
    assert "can breastfeed" in sections["breastfeeding"].text
    assert "months" in sections["time-to-benefit"].text


def test_every_guide_section_is_cited_with_known_sources(kb):
    for s in kb.guide:
        assert s.sources and set(s.sources) <= set(kb.sources), s.id


def test_guide_command_prints_corrections_and_sources():
    out = subprocess.run([sys.executable, "-m", "azaguard.cli", "guide", "--sources"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # each correction names the article it corrects (the seed article, shared/seed/)
    assert "This corrects the article 'Azathioprine and Neuromuscular Disorders: A Comprehensive Guide'" in out.stdout
    assert "What is different now:" in out.stdout
    assert "BSR2016:" in out.stdout
