"""Names vulture cannot see used: each is used dynamically (by a library, a registry or a reader of the
dataclass as a dict) or is public API. `vulture xlmflow flows tasks ray_cluster benchmarks
vulture_whitelist.py --min-confidence 60` (scripts/test.sh) must report nothing else."""

# ruff: noqa: F821, B018
# pydantic: model configuration and validators run by pydantic itself
model_config
_shorthand
_check_processors
_abs_out
_no_credentials_out
_iso_date
_inputs_tuple
_no_credentials
# processor types register when their class is defined (Processor.__init_subclass__); the registry
# finds them by name, nothing imports the class
ClassifyProcessor
LidProcessor
# library hooks: torch's module repr, io's readable(), PyYAML's anchor names (deploy writes none)
extra_repr
readable
generate_anchor
# dataclass fields read through asdict()/to_dict(): the manifest's keys, the split plan's pieces
flow_run_id
table_versions_at_start
input_fingerprint
throughput
file_index
# public API for readers of the tables (README "Reading the outputs")
read_partition
# near-duplicate removal: the reject reason and its detail, used once the stage runs (tests cover them)
NEAR_DUPLICATE
near_duplicate_detail
# benchmarks: torch backend switches and the NLTK-tokenizer interface datatrove calls
allow_tf32
inter_op_num_threads
intra_op_num_threads
word_tokenize
sent_tokenize
span_tokenize
