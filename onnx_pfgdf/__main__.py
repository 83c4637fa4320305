"""``python -m onnx_pfgdf`` entry point."""

import sys

from onnx_pfgdf.cli import main

sys.exit(main())
