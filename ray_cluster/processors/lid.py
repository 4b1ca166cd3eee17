"""Processor `lid`: adds `lang` (ISO 639-3 + ISO 15924, e.g. deu_Latn) and `lang_score` to every document."""

from __future__ import annotations

import collections

import pyarrow as pa

from xlmflow.ray_cluster.langid import LanguageIdentifier, detector_version
from xlmflow.ray_cluster.processors.base import BatchOutput, Processor


class LidProcessor(Processor):
    """Language and script of every document (CLD2 first, lingua for what it cannot decide)."""

    name = "lid"
    columns = pa.schema([("lang", pa.string()), ("lang_score", pa.float32())])
    columns_after = "text"  # where the documents table has always had them

    @classmethod
    def hash_inputs(cls) -> dict[str, str]:
        return {"lid_detector": detector_version()}  # new labels only with --force

    def setup(self, device: str) -> None:
        # CLD2 decides most texts; lingua's models load only if some text needs the slow path
        self.lid = LanguageIdentifier()

    def model_info(self) -> dict:
        return self.lid.info()

    def languages(self, main: pa.Table, datasets: dict[str, list[pa.Table]]) -> dict[str, int]:
        return dict(collections.Counter(x or "und" for x in main["lang"].to_pylist()))

    def count_sections(self, counters: dict[str, int]) -> dict[str, dict[str, int]]:
        """Which detector decided how many documents (`counts.lid_decided_by`)."""
        return {
            "lid_decided_by": {
                k.removeprefix("decided_by_"): v for k, v in counters.items() if k.startswith("decided_by_")
            }
        }

    def finish(self, batch: pa.Table, prepared: pa.Table, inferred: pa.Table) -> BatchOutput:
        before = self.lid.decided.copy()
        found = self.lid.detect(batch.column("text").to_pylist())
        return BatchOutput(
            counters={f"decided_by_{k}": v for k, v in (self.lid.decided - before).items()},
            columns={
                "lang": pa.array([lang for lang, _ in found], pa.string()),
                "lang_score": pa.array([score for _, score in found], pa.float32()),
            },
        )
