"""xlmflow: multilingual corpora -> Arrow shards -> XLM-R on Ray actors -> Parquet."""

__version__ = "0.1.0"
