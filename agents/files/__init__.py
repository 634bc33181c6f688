"""File translators: declarative mappings (YAML) turn csv, json, xml and fixed-width files into Smart Data Models.

mapping = load_mapping("broker_config/mappings/beijing_multisite.yaml")
translate = compile_translator(mapping)
for record in open_records(path, mapping):
    entities = translate(record.values)          # pure: record → NGSI-LD entities
summary = await ingest_file(path, mapping, client, quarantine=..., checkpoint_dir=...)
"""

from agents.files.checkpoint import Checkpoint, checkpoint_key
from agents.files.ingest import BrokerWriter, IngestInterrupted, IngestSummary, ingest_file, plan_chunk
from agents.files.mapping import Mapping, MappingError, load_mapping, parse_mapping, unit_code
from agents.files.readers import Record, RecordStream, open_records, record_values
from agents.files.settings import FilesSettings
from agents.files.timestamps import timestamp_parser
from agents.files.translator import Translator, UnmappableRecord, compile_translator

__all__ = [
    "BrokerWriter",
    "Checkpoint",
    "FilesSettings",
    "IngestInterrupted",
    "IngestSummary",
    "Mapping",
    "MappingError",
    "Record",
    "RecordStream",
    "Translator",
    "UnmappableRecord",
    "checkpoint_key",
    "compile_translator",
    "ingest_file",
    "load_mapping",
    "open_records",
    "parse_mapping",
    "plan_chunk",
    "record_values",
    "timestamp_parser",
    "unit_code",
]
