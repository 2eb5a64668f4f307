"""Generated from proto/allmende/v1 by scripts/gen_protos.py; do not edit by hand."""
