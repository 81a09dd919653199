"""udpchat command-line client: the blocking UDP loop, profiles and ``udpchat-cli``."""
