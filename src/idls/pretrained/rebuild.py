"""Train the shipped weights from scratch and write them into :mod:`idls.pretrained`.

Run after a change of the embedded CNN's recipe, architecture or data generator, or of the
embedded RTS recipe (the tests say when: ``tests/test_pretrained.py``)::

    python -m idls.pretrained.rebuild      # or: make pretrained

It trains in a temporary cache (never reading the shipped files), removes the shipped files of
older recipes and writes the new ones: the classifier's weights and metrics, then its masker.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def rebuild(target: Path | None = None) -> list[Path]:
    """Train both from scratch and write them into ``target`` (default: the package folder); the files written."""
    from idls.embedded import cache_paths, embedded_metrics, trained_embedded_state_dict
    from idls.interpreters import rts_training
    from idls.models import create_model
    from idls.pretrained import EMBEDDED_RTS_FILE, PACKAGED_DIR

    target = Path(target or PACKAGED_DIR)
    previous = os.environ.get("IDLS_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="idls-rebuild-") as scratch:
        os.environ["IDLS_CACHE_DIR"] = scratch
        try:
            trained_embedded_state_dict(packaged=False)
            weights, metrics = cache_paths()
            print(f"embedded_cnn: test accuracy {embedded_metrics(packaged=False)['test_accuracy']:.4f}", file=sys.stderr)
            classifier = create_model("embedded_cnn", weights=str(weights))
            rts_training.embedded_rts_masker(classifier, progress=True, packaged=False)
            masker = rts_training.embedded_rts_path()
            for old in [*target.glob("embedded_cnn-*.safetensors"), *target.glob("embedded_cnn-*.json")]:
                old.unlink()
            written = []
            for source, name in [(weights, weights.name), (metrics, metrics.name), (masker, EMBEDDED_RTS_FILE),
                                 (rts_training.sidecar_path(masker), Path(EMBEDDED_RTS_FILE).with_suffix(".json").name)]:
                written.append(Path(shutil.copyfile(source, target / name)))
        finally:
            if previous is None:
                os.environ.pop("IDLS_CACHE_DIR", None)
            else:
                os.environ["IDLS_CACHE_DIR"] = previous
    return written


def main() -> None:
    for path in rebuild():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
