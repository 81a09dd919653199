"""udpchat server runtime: stores, the blocking UDP loop and ``udpchat-server``."""
