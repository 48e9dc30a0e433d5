"""segflow flows: compose tasks, no math."""
