"""Evaluation as the reference's ``evaluate.py`` does it: task YAMLs, jsonl data, mul/gen/lm encodings, metrics.

config.py (the YAML schema), datasets.py (data files), multiple_choice.py / generation.py / perplexity.py (each task
type's encoding and scoring), metrics.py, tasks.py (the task interface and built-ins; lambada.py), registry.py
(which task a YAML's ``module`` names), runner.py and report.py (per file, per group, overall).
"""
