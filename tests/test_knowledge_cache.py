"""The knowledge base is never read back from a file someone else could write (HAZ-011).

Earlier versions kept the validated knowledge as a pickle in the user's cache folder: anyone who
could write there could run code in every azaguard process, or change a threshold unseen. Now
the packaged files are validated at every start and nothing is cached on disk. These tests plant
a hostile pickle exactly where the old code looked, and check it is neither executed nor used.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import os
import pickle
import subprocess
import sys
from importlib import resources
from pathlib import Path

from azaguard import __version__
from azaguard.knowledge import Knowledge, loader

DATA_FILES = (
    *(f"{n}.toml" for n in ("sources", "protocol", "labs", "codes", "medicines", "safety", "findings", "guide")),
    *(f"cpic/{g}_{k}.tsv" for g in ("TPMT", "NUDT15") for k in ("allele_function", "diplotype_phenotype")),
)
PROBE = (
    "from azaguard.knowledge import load_knowledge\n"
    "kb = load_knowledge()\n"
    "print(kb.version)\n"
    "print(next(t.value for t in kb.thresholds if t.id == 'neutrophils-low'))\n"
)


def old_cache_file(cache_home: Path) -> Path:
    """Where the pickle-caching loader looked: a hash of the code version and every data file."""
    digest = hashlib.sha256(__version__.encode())
    root = resources.files(loader.DATA)
    for name in sorted(DATA_FILES):
        digest.update(name.encode())
        digest.update(root.joinpath(name).read_bytes())
    return cache_home / "azaguard" / f"knowledge-{digest.hexdigest()[:24]}.pickle"


class RunsCode:
    """Unpickling this creates a folder: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def load_in_a_fresh_process(cache_home: Path) -> list[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "HOME": str(cache_home)}
    env.pop("AZAGUARD_NO_KNOWLEDGE_CACHE", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_planted_pickle_in_the_cache_folder_is_never_executed(tmp_path: Path, kb: Knowledge) -> None:
    proof = tmp_path / "unpickling-runs-it"
    pickle.loads(pickle.dumps(RunsCode(proof)))
    assert proof.is_dir()  # the payload is hostile: loading it runs its code
    marker = tmp_path / "the-planted-code-ran"
    planted = old_cache_file(tmp_path)
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps(RunsCode(marker)))
    out = load_in_a_fresh_process(tmp_path)
    assert not marker.exists(), "the knowledge loader executed a file from the cache folder"
    assert " ".join(out[:-1]) == kb.version
    assert sorted(p.name for p in planted.parent.iterdir()) == [planted.name]  # and wrote nothing there


def test_a_tampered_knowledge_copy_in_the_cache_folder_is_never_used(tmp_path: Path, kb: Knowledge) -> None:
    """A well-formed Knowledge with a neutrophil threshold of 0.1 (instead of 1.6): ignored."""
    tampered = dataclasses.replace(
        kb,
        thresholds=tuple(dataclasses.replace(t, value=0.1) if t.id == "neutrophils-low" else t for t in kb.thresholds),
    )
    planted = old_cache_file(tmp_path)
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps(tampered))
    out = load_in_a_fresh_process(tmp_path)
    assert float(out[-1]) == next(t.value for t in kb.thresholds if t.id == "neutrophils-low") != 0.1


def test_the_loader_has_no_way_to_deserialise_code() -> None:
    tree = ast.parse(Path(loader.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}, imported
