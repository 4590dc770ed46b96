"""``medssl bench``: experiments across runs and artifacts.

:mod:`label_efficiency` fine-tunes each initialisation (scratch, each pretrained artifact) at
several label fractions; :mod:`report` writes its table and plot; :mod:`probe` compares
exported encoders by kNN and linear-probe accuracy on one probe set. The top of the layers:
imports methods and tasks, nothing imports it but the CLI.
"""
