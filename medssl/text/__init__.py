"""Clinical guideline text: the knowledge base (configs/guidelines) and local text encoders."""
