"""medssl: from the imaging a hospital already holds to working models.

Stages (DESIGN.md): ingest -> pretrain -> export -> finetune -> predict/serve.
Each stage talks to the next only through files.
"""

__version__ = "0.1.0"

from medssl.log_scrub import install as _install_log_scrubbing

_install_log_scrubbing()  # every log line and warning, ours and the libraries', is scrubbed
