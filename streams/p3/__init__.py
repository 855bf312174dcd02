"""MYLAPS / AMB P3 timing decoders: frame codec, records, mapping to the v1
contract, the ``lapstream ingest p3`` bridge and a decoder simulator."""
