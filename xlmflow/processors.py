"""The plug-in API: what a processor package imports (a stable path, whatever moves inside xlmflow).

    from xlmflow.processors import BatchOutput, Dataset, LabelCounts, Options, Processor

A processor type subclasses `Processor` (or `ModelProcessor` for an XLM-R checkpoint), declares its
`columns` and `datasets` (`Dataset(schema, aggregates)`), and registers through the entry-point group
`xlmflow.processors` of its package. README "Writing a processor" has the contract.
"""

from xlmflow.ray_cluster.outputs import (
    BatchOutput,
    Dataset,
    LabelCounts,
    ProcessorContractError,
    ScoreSample,
)
from xlmflow.ray_cluster.processors.base import ModelOptions, ModelProcessor, Options, Processor
from xlmflow.ray_cluster.registry import ENTRY_POINT_GROUP

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchOutput",
    "Dataset",
    "LabelCounts",
    "ModelOptions",
    "ModelProcessor",
    "Options",
    "Processor",
    "ProcessorContractError",
    "ScoreSample",
]
