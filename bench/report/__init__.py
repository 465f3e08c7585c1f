"""Comparing machines: reads results files, never a framework.

Stages: `load` (files -> one table of rows, migrated to the current schema, with the machine and
run descriptions), `scoreboard` (each machine's speed relative to a baseline, with a confidence
interval from the raw samples).
"""
