from __future__ import annotations

import sys

from neoleads_provider.cli.main import main

sys.exit(main())
