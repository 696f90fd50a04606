"""Kubeflow Pipelines (v2): the one pipeline definition (pipeline.py), its thin components (components.py over
steps.py), and the runners: compile.py (the committed pipeline.yaml), run_local.py (kfp.local), submit.py
(kfp.Client). docs/RUNNING.md explains the three ways to run the product."""
