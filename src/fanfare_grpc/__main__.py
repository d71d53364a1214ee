"""``python -m fanfare_grpc`` is the same as the ``fanfare-grpc`` command."""

import sys

from fanfare_grpc.cli import main

sys.exit(main())
