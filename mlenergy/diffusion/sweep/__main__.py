import sys

from mlenergy.diffusion.sweep import main

sys.exit(main())
