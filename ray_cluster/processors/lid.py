"""Processor `lid`: adds `lang` (ISO 639-3 + ISO 15924, e.g. deu_Latn) and `lang_score` to every document."""

from __future__ import annotations

import pyarrow as pa

from ray_cluster.processors.base import BatchOutput, Processor


class LidProcessor(Processor):
    """Language and script of every document (CLD2 first, lingua for what it cannot decide)."""

    name = "lid"
    columns = pa.schema([("lang", pa.string()), ("lang_score", pa.float32())])

    def setup(self, device: str) -> None:
        from ray_cluster.langid import LanguageIdentifier

        # CLD2 decides most texts; lingua's models load only if some text needs the slow path
        self.lid = LanguageIdentifier()

    def model_info(self) -> dict:
        return self.lid.info()

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
