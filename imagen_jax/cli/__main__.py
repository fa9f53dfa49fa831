"""`python -m imagen_jax.cli` = `imagen-jax`."""

import sys

from imagen_jax.cli import main

sys.exit(main())
