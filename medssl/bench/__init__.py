"""``medssl bench``: experiments across runs (the label-efficiency harness)."""
