import sys

from mbert_jax.cli import main

sys.exit(main())
