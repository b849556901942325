"""The pre-registered study of the paper's claim: layer priority against all-at-once.

- `arms`: the design (folds, seeds, iterations, learning-rate grid), the arms and how one
  (fold, seed, arm) run is made;
- `stats`: the paired, fold-stratified bootstrap of MR^-2 differences and the decision rule;
- `drift`: each layer's relative output error against the float network;
- `results`: one run's detections and metadata on disk;
- `analysis`: every run pooled, bootstrapped and judged by the decision rule;
- `report`: the study's `.md`, plots and its part of bench/results/README.md.

`bench.claim` (`python -m bench.claim`) schedules the runs, resumes them and writes the report.
"""
